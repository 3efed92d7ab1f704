"""Stack → checkpoint: exactly the touched tensors change (to W0 + Σ s·ΔW), every other tensor is bit-identical,
the base file is never modified, and bad inputs are named."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lib_lorastack.doctor.basefile import BaseCheckpoint, CheckpointError
from lib_lorastack.doctor.checkpoint import bake_checkpoint
from lib_lorastack.doctor.output import OutputError
from lib_lorastack.doctor.stack import stack_item
from lib_lorastack.formats.hashes import compute_hashes
from tests.helpers.doctor_fixtures import (
    FAMILY,
    correlated,
    doctor_targets,
    factors,
    loha,
    lora,
    model_and_checkpoint,
    unit_delta,
)


@pytest.fixture()
def setup(tmp_path):
    targets = doctor_targets()
    fa = factors(targets, rank=4, seed=1)
    items = [
        stack_item(lora("a", fa), 0.8),
        stack_item(lora("b", correlated(fa, seed=2, mix=0.5)), 0.5, 1.2, lbw="1,0.5,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"),
        stack_item(loha("c", [t for t in targets if "output_blocks" in t.module], seed=3), -0.4),
    ]
    path = tmp_path / "base.safetensors"
    sd = model_and_checkpoint(path)
    return items, path, sd


def _read(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def test_only_touched_tensors_change_and_to_the_stack_value(setup, tmp_path) -> None:
    items, path, sd = setup
    before = compute_hashes(path)
    out = tmp_path / "fused.safetensors"
    result = bake_checkpoint(items, BaseCheckpoint(path), out)
    assert compute_hashes(path) == before  # the base file is only read
    new = _read(out)
    assert new.keys() == sd.keys()
    touched = {f"{t.module}.{t.param}" for it in items for t in it.lora.modules}
    assert set(result.changed) == touched and result.copied == len(sd) - len(touched)
    for key, value in sd.items():
        assert new[key].dtype == value.dtype and new[key].shape == value.shape
        if key not in touched:
            assert torch.equal(new[key].view(torch.uint8), value.view(torch.uint8)), key  # bit-identical
    for it in items:
        for t in it.lora.modules:
            key = f"{t.module}.{t.param}"
            want = sd[key].double().reshape(sd[key].shape[0], -1)
            for other in items:
                if t in other.lora.modules:
                    want = want + other.strength_for(t) * unit_delta(other.lora, t)
            got = new[key].double().reshape(want.shape)
            assert torch.allclose(got, want, atol=2e-3 * float(want.abs().max())), key  # one fp16 rounding
            assert not torch.equal(new[key], sd[key])
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["note"] == "test checkpoint"
    recipe = json.loads(meta["lorastack_recipe"])
    assert [s["name"] for s in recipe["sources"]] == ["a", "b", "c"] and recipe["base"] == "base.safetensors"
    assert not list(tmp_path.glob(".*tmp"))


def test_refuses_to_overwrite_the_base_or_an_existing_file(setup, tmp_path) -> None:
    items, path, _ = setup
    before = compute_hashes(path)
    with pytest.raises(OutputError, match="is one of the inputs"):
        bake_checkpoint(items, BaseCheckpoint(path), path, force=True)
    assert compute_hashes(path) == before
    existing = tmp_path / "existing.safetensors"
    existing.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="exists"):
        bake_checkpoint(items, BaseCheckpoint(path), existing)
    assert existing.read_bytes() == b"keep me"


def test_a_checkpoint_that_lacks_a_changed_key_or_is_another_family_is_named(setup, tmp_path) -> None:
    items, _, sd = setup
    missing = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    del sd[missing]
    broken = tmp_path / "broken.safetensors"
    save_file(sd, str(broken))
    with pytest.raises(CheckpointError, match=f"has no tensor '{missing}'"):
        bake_checkpoint(items, BaseCheckpoint(broken), tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    xl = tmp_path / "xl.safetensors"
    save_file({"model.diffusion_model.label_emb.0.0.weight": torch.zeros(2, 2)}, str(xl))
    with pytest.raises(CheckpointError, match="is an SDXL model; the stack is SD1"):
        bake_checkpoint(items, BaseCheckpoint(xl), tmp_path / "out.safetensors", family=FAMILY)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors"):
        BaseCheckpoint(junk)
