"""The online strength switch that skips planning: the same up factors (so the same outputs, bit for bit) as a
planned apply of the same stack, and everything after it still consistent."""

from __future__ import annotations

import torch

import lib_lorastack.engine.engine as engine_module
from lib_lorastack.engine import PatchEngine, StackLayer
from lib_lorastack.formats.targets import Family
from lib_lorastack.syntax.lbw import resolve_block_weights
from tests.helpers.engine_fixtures import make_lora, same_bits, small_model, snapshot, subset_targets

F = Family.SD1
SUBSET = ("input_blocks.1.", "middle_block.1.proj")


def _outputs(modules, names, inputs):
    with torch.no_grad():
        return {n: modules[n](inputs[n]) for n in names}


def test_online_strength_switch_skips_planning_and_gives_the_planned_bits(monkeypatch) -> None:
    targets = subset_targets(F, SUBSET)
    loras = [make_lora(F, targets[i::1 + i % 2], name=f"l{i}", seed=i, rank=2 + i, alpha=1.0 + i) for i in range(3)]
    outall = resolve_block_weights(F, "OUTALL").weight_for
    a = [StackLayer(loras[0], unet=0.7), StackLayer(loras[1], unet=-0.4, block_weight=outall), StackLayer(loras[2], unet=1.2)]
    b = [StackLayer(loras[0], unet=0.2), StackLayer(loras[1], unet=0.9, block_weight=outall), StackLayer(loras[2], unet=-0.5)]
    model, modules = small_model(F, subset=SUBSET)
    base = snapshot(model)
    names = sorted({t.module for t in targets if isinstance(modules[t.module], torch.nn.Linear)})
    g = torch.Generator().manual_seed(0)
    inputs = {n: torch.randn(3, 7, modules[n].in_features, generator=g) for n in names}

    def planned(stack):
        _ref_model, ref_modules = small_model(F, subset=SUBSET)
        ref = PatchEngine(ref_modules, mode="online")
        ref.apply(stack)
        out = _outputs(ref_modules, names, inputs)
        ref.clear()
        return out

    want_a, want_b = planned(a), planned(b)
    engine = PatchEngine(modules, mode="online")
    engine.apply(a)
    assert engine._fast_online_switch is not None
    plans = []
    real_build_plan = engine_module.build_plan
    monkeypatch.setattr(engine_module, "build_plan", lambda *args, **kw: plans.append(1) or real_build_plan(*args, **kw))
    for stack, want in ((b, want_b), (a, want_a), (b, want_b)):
        report = engine.apply(stack)
        assert report.layers_online == len(engine._online) > 0 and report.layers_written == 0
        assert engine._fast_online_switch is not None
        got = _outputs(modules, names, inputs)
        assert all(torch.equal(got[n], want[n]) for n in names)
    assert not plans, "a strength-only online switch must not plan"
    assert same_bits(snapshot(model), base)  # online: no weight written
    # a structural change plans again, from plans rebuilt from the fast-switched state
    engine.apply(a[:2])
    engine.apply(a)
    assert all(torch.equal(x, want_a[n]) for n, x in _outputs(modules, names, inputs).items())
    engine.clear()
    assert not engine._online and same_bits(snapshot(model), base)
