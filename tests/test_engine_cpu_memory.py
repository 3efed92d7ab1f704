"""On the CPU the engine shares memory with the model: a restore hands the backup's memory to the weight instead of
copying it, only the applied state's programs stay, and nothing the parsed files hold is copied again."""

from __future__ import annotations

import pytest
import torch

import lib_lorastack.engine.engine as engine_module
from lib_lorastack.engine import PatchEngine, StackLayer
from lib_lorastack.errors import PatchError
from lib_lorastack.formats.targets import Family
from tests.helpers.engine_fixtures import make_lora, same_bits, small_model, snapshot, subset_targets

F = Family.SD1


@pytest.fixture(scope="module")
def loras():
    targets = subset_targets(F)
    return [make_lora(F, targets[i::1 + i % 2], name=f"lora{i}", seed=i, rank=2 + i) for i in range(3)]


def _weights(modules, lora) -> dict[str, torch.nn.Parameter]:
    return {t.module: getattr(modules[t.module], t.param) for t in lora.modules}


def test_restore_takes_over_the_backups_memory(loras) -> None:
    model, modules = small_model(F)
    base = snapshot(model)
    params = _weights(modules, loras[0])
    engine = PatchEngine(modules)
    engine.apply([StackLayer(loras[0], te=0.8, unet=0.7)])
    backup_ptrs = {k[0]: engine.backups.get(k).data_ptr() for k in engine.backups if k[1] == "weight"}
    report = engine.clear()
    assert report.layers_restored >= len(backup_ptrs) > 0
    assert same_bits(snapshot(model), base)
    for name, param in params.items():
        assert modules[name].weight is param  # the same Parameter object: every holder sees the restore
        if name in backup_ptrs:
            assert param.data_ptr() == backup_ptrs[name]  # its memory is the backup's: nothing was copied
    assert engine.backup_bytes() == 0


def test_a_weight_sharing_its_storage_is_copied_back_and_its_views_see_it(loras) -> None:
    _model, modules = small_model(F)
    param = next(p for p in _weights(modules, loras[0]).values() if p.dim() == 2)
    view = param.detach().view(-1)[: param.shape[1]]  # e.g. a tied or host-held view of the weight
    pristine = view.clone()
    ptr = param.data_ptr()
    engine = PatchEngine(modules)
    engine.apply([StackLayer(loras[0], te=1.0, unet=1.0)])
    assert not torch.equal(view, pristine)
    engine.clear()
    assert param.data_ptr() == ptr
    assert torch.equal(view, pristine)


def test_a_partial_restore_swaps_only_what_leaves(loras) -> None:
    model, modules = small_model(F)
    base = snapshot(model)
    engine = PatchEngine(modules)
    both = [StackLayer(loras[0], unet=0.6, te=0.6), StackLayer(loras[1], unet=0.9, te=0.9)]
    engine.apply(both)
    engine.apply(both[:1])  # lora1's own layers leave, shared ones are rewritten from their backups
    reference_model, reference_modules = small_model(F)
    PatchEngine(reference_modules).apply(both[:1])
    assert same_bits(snapshot(model), snapshot(reference_model))
    engine.clear()
    assert same_bits(snapshot(model), base)


def test_a_failed_apply_after_restores_leaves_the_state_as_it_was(loras) -> None:
    model, modules = small_model(F)
    engine = PatchEngine(modules)
    engine.apply([StackLayer(loras[0], unet=0.8, te=0.8), StackLayer(loras[1], unet=0.5, te=0.5)])
    before = snapshot(model)
    backups = engine.backup_bytes()
    for fail_after in (0, 3, 11):
        engine._fail_after_writes = fail_after
        with pytest.raises(PatchError):
            # lora1's own layers are restored first (deferred swaps), then lora2's writes fail
            engine.apply([StackLayer(loras[0], unet=0.8, te=0.8), StackLayer(loras[2], unet=-0.4, te=0.3)])
        engine._fail_after_writes = None
        assert same_bits(snapshot(model), before)
        assert engine.backup_bytes() == backups
    base_model, _ = small_model(F)
    engine.clear()
    assert same_bits(snapshot(model), snapshot(base_model))


def test_cpu_keeps_only_the_applied_programs_and_no_factor_copies(loras) -> None:
    _model, modules = small_model(F)
    engine = PatchEngine(modules)
    for stack in ([loras[0], loras[1]], [loras[0], loras[2]], [loras[1], loras[2]], [loras[0], loras[1]]):
        engine.apply([StackLayer(lora, unet=0.7, te=0.7) for lora in stack])
        assert len(engine.programs) == len(engine.patched())
        assert engine.programs.nbytes() == 0  # their concatenated factors are freed until the next apply
        assert len(engine.graphs) <= 1
    assert engine.cache.nbytes() == 0 and len(engine.cache._entries) == 0
    builds = engine.programs.builds
    engine.apply([StackLayer(loras[0], unet=0.5, te=0.5), StackLayer(loras[1], unet=0.2, te=0.2)])
    assert engine.programs.builds == builds  # a strength change builds no program
    assert engine.programs.nbytes() == 0
    engine.clear()
    assert len(engine.programs) == 0


def test_freed_memory_goes_back_after_a_large_restore(loras, monkeypatch) -> None:
    _model, modules = small_model(F)
    engine = PatchEngine(modules)
    engine.apply([StackLayer(loras[0]), StackLayer(loras[1])])
    held = engine.backups.nbytes_on("cpu")
    seen: list[int] = []
    monkeypatch.setattr(engine_module, "return_freed_memory", lambda freed: seen.append(freed) or False)
    engine.clear()
    assert len(seen) == 1 and seen[0] >= held  # the backups and the programs' concatenated factors
