"""Every targetable module of the WebUI's real SD1.5 / SD2.1 / SDXL structure is reached by kohya and PEFT keys."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from lib_lorastack.formats.loader import parse_state_dict
from lib_lorastack.formats.model_tables import load_table
from lib_lorastack.formats.targets import Family
from tests.helpers.lora_writers import kohya_key, kohya_lora, peft_lora, targetable

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "model-tables"
FAMILIES = [Family.SD1, Family.SD2, Family.SDXL]
SHARED_FILES = {Family.SD1: "sd15.json", Family.SD2: "sd21.json", Family.SDXL: "sdxl.json"}


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/model-tables not beside the checkout")
@pytest.mark.parametrize("family", FAMILIES)
def test_shipped_tables_equal_the_reference(family: Family) -> None:
    ref = json.loads((SHARED / SHARED_FILES[family]).read_text())
    ours = load_table(family)
    assert list(ours.modules) == [m["name"] for m in ref["modules"]]
    for m in ref["modules"]:
        info = ours.modules[m["name"]]
        assert info.type == m["type"]
        assert info.params == {k: tuple(v) for k, v in m["params"].items()}
    raw = (Path(__file__).resolve().parents[1] / "lib_lorastack" / "data").glob("*.json.gz")
    assert all(json.loads(gzip.decompress(p.read_bytes())) for p in raw)


def _check_every_key_maps_once(family: Family, sd: dict[str, torch.Tensor], expected: int) -> None:
    parsed = parse_state_dict(sd, family=family, name="cover")
    assert parsed.family is family
    assert not parsed.unmatched, parsed.unmatched[:5]
    assert not parsed.problems, parsed.problems[:5]
    assert len(parsed.modules) == expected
    table = load_table(family)
    for target, adapter in parsed.modules.items():
        shape = table.shape_of(target)
        assert adapter.update(torch.empty(shape, device="meta"), device="meta").weight.shape == shape


@pytest.mark.parametrize("family", FAMILIES)
def test_kohya_lora_on_every_module(family: Family) -> None:
    targets = targetable(family)
    assert len(targets) > 100
    sd = kohya_lora(family, targets, rank=1, alpha=1.0)
    assert len(sd) == 3 * len(targets)  # one key set per target: nothing collides
    _check_every_key_maps_once(family, sd, len(targets))


@pytest.mark.parametrize("family", FAMILIES)
def test_peft_lora_on_every_module(family: Family) -> None:
    targets = targetable(family)
    sd = peft_lora(family, targets, rank=1)
    _check_every_key_maps_once(family, sd, len(targets))


def test_sdxl_kohya_with_diffusers_unet_names_maps_the_upsampler_right() -> None:
    targets = [t for t in targetable(Family.SDXL) if "output_blocks.2.2.conv" in t.module or "label_emb" in t.module]
    assert len(targets) == 3
    sd = kohya_lora(Family.SDXL, targets, rank=1, ldm_unet=False)
    assert any("up_blocks_0_upsamplers_0_conv" in k for k in sd)
    assert any("add_embedding_linear_1" in k for k in sd)
    _check_every_key_maps_once(Family.SDXL, sd, 3)


def test_openclip_partial_qkv_applies() -> None:
    """The WebUI skips an OpenCLIP attention unless q, k, v and out are all there; we apply what is there."""
    targets = [t for t in targetable(Family.SD2) if t.param == "in_proj_weight" and t.rows[0] == 0][:3]
    sd = kohya_lora(Family.SD2, targets, rank=2)
    assert all("_self_attn_q_proj" in k for k in sd)
    parsed = parse_state_dict(sd, family=Family.SD2)
    assert set(parsed.modules) == set(targets)


def test_kohya_key_spelling_examples() -> None:
    t = [t for t in targetable(Family.SD1) if t.module.endswith("input_blocks.1.1.transformer_blocks.0.attn1.to_q")]
    assert kohya_key(t[0], Family.SD1) == "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


@pytest.mark.parametrize("family", FAMILIES)
def test_norm_lora_on_every_norm(family: Family) -> None:
    table = load_table(family)
    norms = [t for t in targetable(family, norms=True) if table.modules[t.module].base in ("GroupNorm", "LayerNorm")]
    assert len(norms) > 20
    sd: dict[str, torch.Tensor] = {}
    for t in norms:
        (width,) = table.shape_of(t)
        key = kohya_key(t, family)
        sd[f"{key}.w_norm"] = torch.full((width,), 0.01)
        sd[f"{key}.b_norm"] = torch.full((width,), 0.02)
    parsed = parse_state_dict(sd, family=family, name="norms")
    assert not parsed.unmatched and not parsed.problems
    assert set(parsed.modules) == set(norms)
    assert {a.algo for a in parsed.modules.values()} == {"norm"}
