"""LyCORIS types (LoHa, LoKr, DoRA, Tucker LoCon) on the engine's grouped, replayed path: the same bits as the
per-weight path, against lycoris-lora's own files."""

from __future__ import annotations

import pytest
import torch
from lycoris.modules.locon import LoConModule
from lycoris.modules.loha import LohaModule
from lycoris.modules.lokr import LokrModule

import lib_lorastack.engine.engine as engine_module
from lib_lorastack.engine import PatchEngine, StackLayer
from lib_lorastack.errors import PatchError
from lib_lorastack.formats.loader import parse_state_dict
from lib_lorastack.formats.targets import Family
from lib_lorastack.formats.writers import kohya_key, target_shape
from tests.helpers.engine_fixtures import make_lora, same_bits, small_model, snapshot, subset_targets

F = Family.SD1
SUBSET = ("input_blocks.1.", "input_blocks.0.0", "middle_block.1.proj")  # Linear, 1×1 and 3×3 convs, small
KINDS = {
    "loha": (LohaModule, {}),
    "lokr": (LokrModule, {"factor": 4}),
    "dora": (LoConModule, {"weight_decompose": True}),
    "tucker": (LoConModule, {"use_tucker": True}),
}


def lycoris_lora(kind: str, targets, seed: int):
    """A file as lycoris-lora writes it: its own module's state dict per layer, every factor filled with noise."""
    module_class, extra = KINDS[kind]
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for t in targets:
        shape = target_shape(t, F)
        if kind == "tucker" and len(shape) != 4:
            continue
        with torch.device("cpu" if kind == "dora" else "meta"):  # DoRA reads the layer's weight norms
            layer = torch.nn.Linear(shape[1], shape[0]) if len(shape) == 2 else torch.nn.Conv2d(shape[1], shape[0], tuple(shape[2:]), padding=1)
        lyco = module_class("x", layer, 1.0, lora_dim=4, alpha=2, **extra)
        key = kohya_key(t, F)
        for name, tensor in lyco.state_dict().items():
            if name == "alpha":
                sd[f"{key}.alpha"] = tensor.detach().clone()
            elif name == "dora_scale":
                sd[f"{key}.dora_scale"] = 1.0 + torch.rand(tensor.shape, generator=g)
            elif tensor.is_floating_point():
                sd[f"{key}.{name}"] = torch.randn(tensor.shape, generator=g) * 0.05
    return parse_state_dict(sd, family=F, name=kind)


@pytest.fixture(scope="module")
def mixed():
    targets = subset_targets(F, SUBSET)
    plain = make_lora(F, targets, name="plain", seed=3, rank=4, alpha=2.0)
    return [plain, *(lycoris_lora(kind, targets[i::2], seed=10 + i) for i, kind in enumerate(KINDS))]


def _stacks(loras):
    a = [StackLayer(lora, unet=0.5 + 0.1 * i, te=0.3) for i, lora in enumerate(loras)]
    b = [StackLayer(lora, unet=0.9 - 0.15 * i, te=-0.2) for i, lora in enumerate(loras)]
    c = [*b[:2], StackLayer(loras[2], unet=0.123, te=-0.2), *b[3:]]
    return a, b, c


def test_every_lycoris_type_is_on_the_graph_path(mixed) -> None:
    _model, modules = small_model(F, subset=SUBSET)
    engine = PatchEngine(modules)
    a, _b, _ = _stacks(mixed)
    engine.apply(a)
    for key, plan in engine._applied.items():
        program = engine.program(plan, engine._param(key))
        assert program.graph_safe, (key, [type(x).__name__ for x in program.rest_adapters])
    assert {type(c.adapter).__name__ for p in engine._applied.values() for c in p.contributions} >= {"LoHa", "LoKr", "DoRA", "LoRA"}
    engine.clear()


def test_replayed_switches_give_the_per_weight_bits(mixed, monkeypatch) -> None:
    """The grouped, replayed write (and the fast switch that skips planning) against a fresh engine writing each
    weight on its own (graphs off): bit for bit, through a sequence of switches, an incremental change and a
    rollback."""
    monkeypatch.setattr(engine_module, "MIN_WEIGHTS", 2)
    model, modules = small_model(F, subset=SUBSET)
    base = snapshot(model)
    a, b, c = _stacks(mixed)

    def per_weight(stack):
        ref_model, ref_modules = small_model(F, subset=SUBSET)
        ref = PatchEngine(ref_modules, graphs=False)
        ref.apply(stack)
        return snapshot(ref_model)

    want = {"a": per_weight(a), "b": per_weight(b), "c": per_weight(c)}
    engine = PatchEngine(modules)
    assert engine.apply(a).graph == ""  # first write of each weight: eager
    assert engine.apply(b).graph == "captured"
    assert same_bits(snapshot(model), want["b"])
    for name, stack in (("a", a), ("b", b), ("c", c), ("a", a)):
        report = engine.apply(stack)
        assert report.graph == "replayed", name
        assert engine._fast is not None, "the fast switch (no planning) must serve a strength-only change"
        assert same_bits(snapshot(model), want[name]), name
    engine.apply(b)
    report = engine.apply(c)  # one LoRA's strength: on the CPU only its weights are rewritten
    assert report.graph == "replayed" and report.weight_writes == len({(t.module, t.param) for t in mixed[2].modules})
    assert same_bits(snapshot(model), want["c"])
    engine.apply(a)
    engine._fail_after_writes = 3
    with pytest.raises(PatchError):
        engine.apply([*a[:3], StackLayer(mixed[3], unet=2.0)])
    assert same_bits(snapshot(model), want["a"])
    engine.apply(b)
    assert same_bits(snapshot(model), want["b"])
    engine.clear()
    assert same_bits(snapshot(model), base)


def test_lycoris_types_fused_equal_float64_reference(mixed) -> None:
    """The fused weights against W0 + Σ s·ΔW in float64 from each adapter's own ``update`` (the adapters are checked
    against lycoris-lora in test_adapters_lycoris.py); DoRA last, on the additive sum."""
    model, modules = small_model(F, subset=SUBSET)
    base = snapshot(model)
    a, _, _ = _stacks(mixed)
    PatchEngine(modules).apply(a)
    got = snapshot(model)
    want = {k: v.double().clone() for k, v in base.items()}
    for layer in a:  # additive first (the stack has one multiplicative LoRA: DoRA)
        if layer.lora.name == "dora":
            continue
        for target, adapter in layer.lora.modules.items():
            key = f"{target.module}.{target.param}"
            want[key] += layer.strength_for(target) * adapter.update(want[key], dtype=torch.float64).weight
    dora = next(layer for layer in a if layer.lora.name == "dora")
    for target, adapter in dora.lora.modules.items():
        key = f"{target.module}.{target.param}"
        want[key] += dora.strength_for(target) * adapter.update(want[key], dtype=torch.float64).weight
    for k in base:
        err = float((got[k].double() - want[k]).abs().max() / want[k].abs().max())
        assert err < 2e-6, (k, err)
