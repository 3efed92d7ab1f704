"""Packed UNet storage in the stand-in Forge and Neo (tests/forge_stub backend/operations_gguf.py, operations_bnb.py):
a model whose UNet Linear weights are GGUF Q8_0 blocks or NF4 4-bit codes. Our engine puts those layers online (the
layer's own forward dequantises), never writes or copies their bytes, and the job's info says so.

The reference is independent of our engine: the same model with its packed weights dequantised into ordinary fp32
weights, with the stand-in built-in's fused merge (``W + s·up@down·alpha/rank`` in fp32, the definition of a LoRA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers.forge import ForgeUI, forge_checkpoint
from tests.helpers.webui import same

MODE_NOTE = "UNet stored as {}: online (packed weights are never written)"


def packed_checkpoint(kind: str, seed: int = 0) -> tuple[dict, dict]:
    """(packed checkpoint, the same with every packed weight dequantised into fp32): UNet 2-D weights packed."""
    from backend.operations_bnb import Params4bit, functional_dequantize_4bit
    from backend.operations_gguf import ParameterGGUF, dequantize_tensor

    packed, dense = {}, {}
    for key, value in forge_checkpoint(seed).items():
        if key.startswith("diffusion_model.") and value.dim() == 2:
            p = ParameterGGUF.quantized(value) if kind == "gguf" else Params4bit.quantized(value)
            packed[key] = p
            dense[key] = (dequantize_tensor(p) if kind == "gguf" else functional_dequantize_4bit(p)).float()
        else:
            packed[key] = dense[key] = value
    return packed, dense


def packed_bytes(ui: ForgeUI) -> dict[str, torch.Tensor]:
    unet = ui.model.forge_objects_original.unet.model
    return {n: p.data.clone() for n, p in unet.named_parameters() if hasattr(p, "gguf_cls") or hasattr(p, "quant_state")}


def close(a, b, atol=1e-3) -> bool:
    return torch.allclose(a.images[0].float(), b.images[0].float(), atol=atol)


@pytest.fixture(params=[("forge", "gguf"), ("forge", "nf4"), ("neo", "gguf")], ids=lambda p: f"{p[0]}-{p[1]}")
def packed_ui(request, tmp_path: Path, monkeypatch):
    host, kind = request.param
    monkeypatch.setenv("STUB_DATA_PATH", str(tmp_path / "data"))
    ui = ForgeUI(tmp_path, host)
    packed, dense = packed_checkpoint(kind)
    ui.packed_ckpt = ui.sd_models.CheckpointInfo(f"q.{kind}", packed)
    ui.dense_ckpt = ui.sd_models.CheckpointInfo("dequantised.safetensors", dense)
    ui.kind = kind
    ui.switch(ui.packed_ckpt)
    yield ui
    ui.close()


def test_a_tag_on_a_packed_model_changes_the_output_as_the_merged_dense_model_does(packed_ui: ForgeUI, capsys) -> None:
    ui = packed_ui
    base, _ = ui.txt2img("a cat")
    before = packed_bytes(ui)
    assert before and ui.model.forge_objects_original.unet.model.storage_dtype == ui.kind
    ours, p = ui.txt2img("a cat <lora:char:1> <lora:detail:0.6>")
    last_job = ui.host().last_job  # the panel's "last job" line
    weaker, _ = ui.txt2img("a cat <lora:char:0.4> <lora:detail:0.6>")
    after, _ = ui.txt2img("a cat")
    engine = ui.engine()
    assert not same(base.images[0], ours.images[0]) and not close(ours, weaker)
    assert same(base.images[0], after.images[0])  # restore = the forwards removed: the base output, bit for bit
    now = packed_bytes(ui)
    assert all(torch.equal(before[n], now[n]) for n in before)  # the packed bytes were never written
    assert engine.backup_bytes() == 0 and engine.stats.bytes_backed_up == 0  # …nor copied
    # the job's mode and why: the infotext, the console and the panel's last-job line
    note = MODE_NOTE.format(ui.kind)
    assert p.extra_generation_params["LoRA stack mode"] == note
    assert note in capsys.readouterr().out
    assert "(online)" in last_job and last_job.endswith(f"; {note}")
    assert "LoRA stack errors" not in p.extra_generation_params
    # the built-in did nothing (the tags were ours)
    unet = ui.model.forge_objects_after_applying_lora.unet
    assert (unet.lora_patches if hasattr(unet, "lora_patches") else unet.patches) == {}
    assert ui.networks.calls["load_networks"] == 0

    ui.switch(ui.dense_ckpt)  # the reference: dequantised weights, the built-in's fused fp32 merge
    ui.set("lorastack_takeover", False)
    ref, _ = ui.txt2img("a cat <lora:char:1> <lora:detail:0.6>")
    ref_weaker, _ = ui.txt2img("a cat <lora:char:0.4> <lora:detail:0.6>")
    ref_base, _ = ui.txt2img("a cat")
    assert close(base, ref_base, atol=1e-5)  # the dequantisation is the same on both sides
    assert close(ours, ref) and close(weaker, ref_weaker)
    assert not close(ref, ref_base)


def test_a_strength_change_on_a_packed_model_only_rescales(packed_ui: ForgeUI) -> None:
    ui = packed_ui
    ui.txt2img("a cat <lora:char:1>")
    engine = ui.engine()
    online = dict(engine._online)
    assert online and set(engine.patched().values()) == {"online"}  # the whole job is online (one mode a job)
    packed_layers = [n for n, layer in online.items() if layer.packed == ui.kind]
    assert packed_layers  # the packed Linear layers themselves went online
    before = packed_bytes(ui)
    ui.txt2img("a cat <lora:char:0.3>")
    assert {n: id(layer) for n, layer in engine._online.items()} == {n: id(layer) for n, layer in online.items()}
    assert engine.stats.weight_writes == 0 and engine.backup_bytes() == 0
    assert all(torch.equal(before[n], t) for n, t in packed_bytes(ui).items())


def test_the_engine_puts_a_packed_layer_online_even_in_fused_mode(packed_ui: ForgeUI) -> None:
    ui = packed_ui
    ui.set("lorastack_mode", "fused")
    ui.txt2img("a cat <lora:char:1>")
    modes = ui.engine().patched()
    packed = {n for n, layer in ui.engine()._online.items() if layer.packed}
    assert packed and all(modes[(n, "weight")] == "online" for n in packed)
    assert ui.engine().backup_bytes() == 0


def test_a_dora_on_a_packed_layer_is_skipped_with_a_message_and_the_rest_applies(packed_ui: ForgeUI) -> None:
    ui = packed_ui
    sd = load_file(str(ui.loras / "char.safetensors"))
    downs = [k for k in sd if k.endswith(".lora_down.weight")]
    for k in downs:
        prefix = k[: -len(".lora_down.weight")]
        out = sd[prefix + ".lora_up.weight"].shape[0]
        sd[prefix + ".dora_scale"] = torch.ones(out, 1)
    save_file(sd, str(ui.loras / "char_dora.safetensors"))
    ui.networks.list_available_networks()
    alone, _ = ui.txt2img("a cat <lora:detail:1>")
    both, p = ui.txt2img("a cat <lora:detail:1> <lora:char_dora:1>")
    errors = p.extra_generation_params.get("LoRA stack errors", "")
    assert "char_dora" in errors and f"W is stored as {ui.kind}" in errors and "DoRA" in errors
    assert "diffusion_model" in errors or "model.diffusion_model" in errors  # names the layer
    # the rest of the stack applies: detail on every layer, char_dora wherever its layer is not packed
    engine = ui.engine()
    on_packed = {c.lora.name for layer in engine._online.values() if layer.packed for c in layer.plan.contributions}
    assert on_packed == {"detail"}
    assert not same(both.images[0], alone.images[0])  # its text-encoder part (not packed) applied


# ----------------------------------------------------------------- the engine alone, on one packed layer
ROOT = Path(__file__).resolve().parents[1]
Q_NAME = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"


def _stub(name: str):
    """A stand-in module loaded from its file (it imports only torch), outside the stand-in's package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_packed_stub_{name}", ROOT / "tests" / "forge_stub" / "backend" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PackedLinear(torch.nn.Module):
    """As Forge's GGUF / bnb Linear: holds the packed tensor, dequantises in its forward, declares no features."""

    def __init__(self, weight, dequantise) -> None:
        super().__init__()
        self.weight, self.bias, self._dequantise = weight, None, dequantise

    def forward(self, x):
        return torch.nn.functional.linear(x, self._dequantise(self.weight).to(x.dtype))


def _packed_layer(kind: str, w: torch.Tensor) -> PackedLinear:
    if kind == "gguf":
        gguf = _stub("operations_gguf")
        return PackedLinear(gguf.ParameterGGUF.quantized(w), gguf.dequantize_tensor)
    bnb = _stub("operations_bnb")
    return PackedLinear(bnb.Params4bit.quantized(w), bnb.functional_dequantize_4bit)


@pytest.mark.parametrize("kind", ["gguf", "nf4"])
def test_a_loha_on_a_packed_layer_adds_its_definition_and_reads_no_packed_byte(kind: str) -> None:
    """LoHa is computed in full (not low-rank): its ΔW = (w1a@w1b)·(w2a@w2b)·alpha/rank, on the logical shape."""
    from lib_lorastack.engine import PatchEngine, StackLayer
    from lib_lorastack.formats.loader import parse_state_dict
    from lib_lorastack.formats.targets import Family
    from tests.helpers.lora_writers import lycoris_loha_for_targets

    g = torch.Generator().manual_seed(0)
    layer = _packed_layer(kind, torch.randn(320, 320, generator=g) * 0.05)
    raw = layer.weight.data.clone()
    sd = lycoris_loha_for_targets(Family.SD1, [Q_NAME], rank=4, alpha=2.0, seed=5)
    lora = parse_state_dict(sd, family=Family.SD1, name="loha")
    engine = PatchEngine({Q_NAME: layer}, mode="fused")
    x = torch.randn(3, 320, generator=g)
    base = layer(x)
    report = engine.apply([StackLayer(lora, unet=0.8)])
    assert not report.skipped and engine.patched() == {(Q_NAME, "weight"): "online"}
    (w1a, w1b, w2a, w2b) = (sd[k] for k in sorted(k for k in sd if "hada" in k))
    delta = (w1a @ w1b) * (w2a @ w2b) * (2.0 / 4) * 0.8
    expected = x @ delta.t()
    error = (layer(x) - base - expected).abs().max() / expected.abs().max()
    assert error < 5e-3  # the dense change is kept in the layer's compute dtype (fp16 here)
    engine.clear()
    assert torch.equal(layer(x), base) and torch.equal(layer.weight.data, raw) and engine.backup_bytes() == 0


@pytest.mark.parametrize("kind", ["gguf", "nf4"])
def test_per_sample_strengths_on_a_packed_layer(kind: str) -> None:
    from lib_lorastack.engine import PatchEngine, StackLayer
    from lib_lorastack.formats.targets import Family
    from tests.helpers.engine_fixtures import make_lora
    from tests.helpers.lora_writers import resolve_targets

    g = torch.Generator().manual_seed(1)
    layer = _packed_layer(kind, torch.randn(320, 320, generator=g) * 0.05)
    lora = make_lora(Family.SD1, resolve_targets(Family.SD1, [Q_NAME]), name="one", seed=3)
    engine = PatchEngine({Q_NAME: layer}, mode="online")
    x = torch.randn(2, 320, generator=g)
    outs = {}
    for s in (0.0, 1.0, 0.25):
        engine.apply([StackLayer(lora, unet=s)] if s else [])
        outs[s] = layer(x)
    engine.apply_per_sample([[StackLayer(lora, unet=1.0)], [StackLayer(lora, unet=0.25)]])
    mixed = layer(x)
    assert torch.allclose(mixed[0], outs[1.0][0], atol=1e-5) and torch.allclose(mixed[1], outs[0.25][1], atol=1e-5)
    assert not torch.allclose(outs[1.0], outs[0.0])
