"""Baking a stack into one LoRA: the exact bake reproduces the stack's deltas (and a model's outputs), the SVD bake's
error is the discarded singular values (Eckart–Young, against torch.linalg.svd of the brute-force sum), and the
files load through our own reader with those deltas."""

from __future__ import annotations

import json

import pytest
import torch

from lib_lorastack.doctor.bake import bake_lora
from lib_lorastack.doctor.output import OutputError
from lib_lorastack.doctor.stack import stack_item
from lib_lorastack.engine import PatchEngine, StackLayer, resolve_modules
from lib_lorastack.formats.hashes import compute_hashes
from lib_lorastack.formats.loader import load_lora, parse_state_dict
from lib_lorastack.formats.writers import target_shape
from lib_lorastack.tools.skeleton import build_skeleton
from tests.helpers.doctor_fixtures import (
    FAMILY,
    LAYERS,
    correlated,
    doctor_targets,
    factors,
    kohya_sd,
    loha,
    unit_delta,
)


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("loras")
    targets = doctor_targets()
    fa = factors(targets, rank=4, seed=1)
    paths = []
    for name, fs, alpha in (("a", fa, 2.0), ("b", correlated(fa, seed=2, mix=0.5), 3.0), ("c", factors(targets[:5], 3, seed=3), None)):
        path = folder / f"{name}.safetensors"
        save_file(kohya_sd(fs, alpha), str(path), metadata={"ss_tag_frequency": json.dumps({"1_x": {name + "_tag": 3}})})
        paths.append(path)
    loaded = [load_lora(p, FAMILY) for p in paths]
    return [
        stack_item(loaded[0], 0.8, path=str(paths[0])),
        stack_item(loaded[1], 0.6, 1.1, lbw="1,0.5,1,1,1,1,1,1,1,0.25,1,1,1,1,1,1,1", path=str(paths[1])),
        stack_item(loaded[2], -0.7, path=str(paths[2])),
    ]


def stack_delta(items, target, dtype=torch.float64) -> torch.Tensor:
    total = torch.zeros(target_shape(target, FAMILY)[0], 1, dtype=dtype)
    for it in items:
        if target in it.lora.modules:
            total = total + it.strength_for(target) * unit_delta(it.lora, target, dtype)
    return total


def baked_delta(parsed, target, dtype=torch.float64) -> torch.Tensor:
    return unit_delta(parsed, target, dtype)


def test_exact_bake_reproduces_every_delta_and_loads_through_our_reader(items, tmp_path) -> None:
    baked = bake_lora(items, FAMILY)
    assert all(m.method == "concat" for m in baked.modules) and not baked.notes
    out = baked.save(tmp_path / "baked.safetensors", items)
    parsed = load_lora(out, FAMILY)
    assert not parsed.problems and not parsed.unmatched
    targets = {t for it in items for t in it.lora.modules}
    assert set(parsed.modules) == targets
    for t in targets:
        want = stack_delta(items, t)
        got = baked_delta(parsed, t)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max())), t
        adapter = parsed.modules[t]
        ranks = sum(it.lora.modules[t].rank for it in items if t in it.lora.modules)
        assert adapter.rank == ranks and adapter.alpha == ranks and adapter.scale == 1.0  # concat: alpha = new rank


def test_exact_bake_gives_the_same_model_outputs_as_the_stack(items) -> None:
    model = build_skeleton(FAMILY, dtype=torch.float32, select=lambda n: any(s in n for s in LAYERS))
    modules = resolve_modules(model)
    baked = parse_state_dict(bake_lora(items, FAMILY).tensors, family=FAMILY, name="baked")
    engine = PatchEngine(modules)
    names = [m for m in {t.module for t in baked.modules} if isinstance(modules[m], torch.nn.Linear | torch.nn.Conv2d)]
    g = torch.Generator().manual_seed(0)
    inputs = {
        n: torch.randn(3, modules[n].in_features, generator=g)
        if isinstance(modules[n], torch.nn.Linear)
        else torch.randn(1, modules[n].in_channels, 8, 8, generator=g)
        for n in names
    }
    with torch.no_grad():
        engine.apply([it.layer for it in items])
        want = {n: modules[n](x) for n, x in inputs.items()}
        engine.apply([StackLayer(baked)])
        got = {n: modules[n](x) for n, x in inputs.items()}
        engine.clear()
    for n in names:
        assert torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-5 * float(want[n].abs().max())), n


def test_svd_bake_error_is_the_discarded_singular_values(items, tmp_path) -> None:
    rank = 5
    baked = bake_lora(items, FAMILY, method="svd", rank=rank, dtype=torch.float64)
    parsed = parse_state_dict(baked.tensors, family=FAMILY, name="svd")
    by_target = {m.target: m for m in baked.modules}
    for t in parsed.modules:
        x = stack_delta(items, t)
        s = torch.linalg.svdvals(x)
        discarded = float((s[rank:] ** 2).sum().sqrt())
        m = by_target[t]
        assert m.rank == min(rank, int((s > s[0] * 1e-12).sum()))
        assert (m.total - m.kept) ** 0.5 == pytest.approx(discarded, rel=1e-6, abs=1e-9)
        got = baked_delta(parsed, t)
        assert float(torch.linalg.norm(x - got)) == pytest.approx(discarded, rel=1e-6, abs=1e-9)
        assert m.total == pytest.approx(float((s**2).sum()), rel=1e-9)
    blocks = baked.blocks()
    assert set(blocks) == {"BASE", "IN01", "IN04", "OUT03"}
    assert all(0 < v["kept"] <= 1 and v["error"] == pytest.approx((1 - v["kept"]) ** 0.5) for v in blocks.values())


def test_non_low_rank_adapters_go_through_the_compressed_path_and_say_so(items) -> None:
    d = loha("detail", [t for t in doctor_targets() if "output_blocks" in t.module], seed=5)
    stack = [*items, stack_item(d, 0.5)]
    baked = bake_lora(stack, FAMILY, rank=64, dtype=torch.float64)
    assert any("detail: 2 loha layer(s) are not a plain low-rank product" in n for n in baked.notes)
    compressed = {m.target for m in baked.modules if m.method == "svd"}
    assert compressed == set(d.modules)
    parsed = parse_state_dict(baked.tensors, family=FAMILY, name="x")
    for t in compressed:  # rank 64 ≥ the sum's rank (4 + 8 + 3 + LoHa 2² = 19): still exact
        want = stack_delta(stack, t)
        assert torch.allclose(baked_delta(parsed, t), want, atol=1e-6 * float(want.abs().max()))


def test_metadata_records_the_sources_and_the_file_hash(items, tmp_path) -> None:
    out = bake_lora(items, FAMILY).save(tmp_path / "rec.safetensors", items)
    from lib_lorastack.formats.files import LoraFile

    meta = LoraFile(out).metadata
    assert meta["sshs_model_hash"] == compute_hashes(out).addnet
    recipe = json.loads(meta["lorastack_recipe"])
    assert recipe["method"] == "concat"
    src = recipe["sources"]
    assert [s["name"] for s in src] == ["a", "b", "c"]
    assert src[0]["sha256"] == compute_hashes(items[0].path).sha256 and src[0]["te"] == 0.8
    assert src[1]["unet"] == 1.1 and src[1]["block_vector"]["IN01"] == 0.5 and src[1]["block_vector"]["OUT04"] == 0.25
    assert meta["ss_network_dim"] == "Dynamic" and meta["ss_base_model_version"] == "sd_v1"
    assert "a_tag" in meta["ss_tag_frequency"] and meta["ss_output_name"] == "rec"


def test_never_overwrites_an_input_or_an_existing_file(items, tmp_path) -> None:
    baked = bake_lora(items, FAMILY)
    before = compute_hashes(items[0].path)
    with pytest.raises(OutputError, match="is one of the inputs"):
        baked.save(items[0].path, items, force=True)
    assert compute_hashes(items[0].path) == before
    out = baked.save(tmp_path / "x.safetensors", items)
    with pytest.raises(OutputError, match="exists"):
        baked.save(out, items)
    baked.save(out, items, force=True)
    assert not list(tmp_path.glob(".*tmp"))


def test_openclip_qkv_rows_bake_and_load_back_onto_the_same_rows() -> None:
    from lib_lorastack.formats.targets import Family
    from tests.helpers.lora_writers import kohya_lora_for_targets, resolve_targets

    names = ["cond_stage_model.model.transformer.resblocks.0.attn", "cond_stage_model.model.transformer.resblocks.0.mlp.c_fc"]
    targets = resolve_targets(Family.SD2, names)
    a = parse_state_dict(kohya_lora_for_targets(Family.SD2, names, rank=2, seed=1), family=Family.SD2, name="a")
    b = parse_state_dict(kohya_lora_for_targets(Family.SD2, names, rank=3, seed=2), family=Family.SD2, name="b")
    stack = [stack_item(a, 0.7), stack_item(b, 1.3)]
    parsed = parse_state_dict(bake_lora(stack, Family.SD2).tensors, family=Family.SD2, name="baked")
    assert set(parsed.modules) == set(targets) and any(t.rows for t in targets)
    for t in targets:
        zeros = torch.zeros(target_shape(t, Family.SD2))
        got, da, db = (lo.modules[t].update(zeros).weight for lo in (parsed, a, b))
        assert torch.allclose(got, 0.7 * da + 1.3 * db, atol=1e-6)
