"""The patch engine on WebUI-named models: exact math, bitwise restore, incremental writes, transactions."""

from __future__ import annotations

import random

import pytest
import torch

from lib_lorastack.engine import PatchEngine, StackLayer
from lib_lorastack.errors import PatchError
from lib_lorastack.formats.targets import Family
from tests.helpers.engine_fixtures import make_lora, same_bits, small_model, snapshot, subset_targets

F = Family.SD1


@pytest.fixture(scope="module")
def loras():
    targets = subset_targets(F)
    # Overlapping target sets: every layer gets one to three LoRAs.
    return [
        make_lora(F, targets[i::1 + i % 2], name=f"lora{i}", seed=i, rank=2 + i, alpha=1.0 + i) for i in range(4)
    ]


def reference(base: dict[str, torch.Tensor], stack: list[StackLayer]) -> dict[str, torch.Tensor]:
    """Plain float64 formula, written independently of the engine: W0 + Σ s·(α/r)·up@down."""
    out = {k: v.double().clone() for k, v in base.items()}
    for layer in stack:
        for target, adapter in layer.lora.modules.items():
            up = adapter.tensors["lora_up.weight"].double()
            down = adapter.tensors["lora_down.weight"].double()
            scale = float(adapter.tensors["alpha"]) / down.shape[0]
            strength = layer.te if target.component.is_text_encoder else layer.unet
            key = f"{target.module}.{target.param}"
            delta = (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(out[key].shape)
            out[key] += strength * scale * delta
    return out


def test_fused_matches_the_formula_and_restores_bit_for_bit(loras) -> None:
    model, modules = small_model(F)
    base = snapshot(model)
    engine = PatchEngine(modules)
    stack = [StackLayer(loras[0], te=0.7, unet=0.9), StackLayer(loras[1], te=-0.4, unet=0.5)]
    report = engine.apply(stack)
    assert report.layers_written > 0 and not report.skipped
    want = reference(base, stack)
    got = snapshot(model)
    for k in base:
        err = (got[k].double() - want[k]).abs().max() / want[k].abs().max()
        assert err < 1e-6, k
    assert engine.backup_bytes() == engine.touched_bytes() > 0
    engine.clear()
    assert same_bits(snapshot(model), base)
    assert engine.backup_bytes() == 0


def test_untouched_layers_are_never_copied(loras) -> None:
    _model, modules = small_model(F)
    engine = PatchEngine(modules)
    engine.apply([StackLayer(loras[0])])
    touched = {t.module for t in loras[0].modules}
    assert {k[0] for k in engine.backups} == touched
    assert engine.touched_bytes() == sum(
        modules[m].weight.numel() * modules[m].weight.element_size() for m in touched
    )


def test_changing_one_lora_rewrites_only_its_layers(loras) -> None:
    model, modules = small_model(F)
    engine = PatchEngine(modules)
    stack = [StackLayer(lora, unet=0.5 + i / 10) for i, lora in enumerate(loras)]
    engine.apply(stack)
    again = engine.apply(stack)
    assert again.weight_writes == 0
    stack[2] = StackLayer(loras[2], unet=1.3)
    report = engine.apply(stack)
    assert report.weight_writes == len({t for t in loras[2].modules if not t.component.is_text_encoder})
    # Same stack from scratch gives the same bits as the incremental path.
    incremental = snapshot(model)
    engine.clear()
    engine.apply(stack)
    assert same_bits(snapshot(model), incremental)


def test_additive_loras_commute_exactly(loras) -> None:
    model, modules = small_model(F)
    engine = PatchEngine(modules)
    engine.apply([StackLayer(loras[0]), StackLayer(loras[1], unet=0.3)])
    first = snapshot(model)
    report = engine.apply([StackLayer(loras[1], unet=0.3), StackLayer(loras[0])])
    assert report.weight_writes == 0
    assert same_bits(snapshot(model), first)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bitwise_restore_after_random_sequences(loras, dtype) -> None:
    model, modules = small_model(F, dtype=dtype)
    base = snapshot(model)
    engines = {m: PatchEngine(modules, mode=m) for m in ("fused", "online")}
    rng = random.Random(1234)
    engine = engines["fused"]
    for _ in range(200):
        action = rng.random()
        if action < 0.15:
            engine.clear()
            assert same_bits(snapshot(model), base)
            engine = engines[rng.choice(["fused", "online"])]
            continue
        chosen = rng.sample(loras, rng.randint(1, len(loras)))
        stack = [StackLayer(lora, te=rng.uniform(-1, 1.5), unet=rng.choice([0.0, 0.5, 1.0, rng.uniform(-1, 2)])) for lora in chosen]
        engine.apply(stack)
    for e in engines.values():
        e.clear()
    assert same_bits(snapshot(model), base)
    assert all(e.backup_bytes() == 0 for e in engines.values())


def test_fault_in_the_middle_restores_the_previous_state(loras) -> None:
    model, modules = small_model(F, dtype=torch.float16)
    engine = PatchEngine(modules)
    engine.apply([StackLayer(loras[0], unet=0.8), StackLayer(loras[3], te=0.5)])
    before = snapshot(model)
    backups_before = engine.backup_bytes()
    for fail_after in (0, 1, 5, 17):
        engine._fail_after_writes = fail_after
        with pytest.raises(PatchError) as info:
            engine.apply([StackLayer(loras[1]), StackLayer(loras[2], unet=-0.6), StackLayer(loras[0], unet=0.1)])
        assert "injected failure" in str(info.value)
        assert info.value.layer is not None or fail_after == 0
        assert same_bits(snapshot(model), before)
        assert engine.backup_bytes() == backups_before
    engine._fail_after_writes = None
    engine.clear()


def test_bad_tensor_names_the_lora_and_layer(loras) -> None:
    model, modules = small_model(F)
    base = snapshot(model)
    engine = PatchEngine(modules)
    engine.apply([StackLayer(loras[0])])
    applied = snapshot(model)
    broken = make_lora(F, subset_targets(F)[:3], name="broken", seed=9)
    target = next(iter(broken.modules))
    broken.modules[target].tensors["lora_down.weight"] = torch.randn(3, 7)  # wrong fan-in, only at apply time
    report = engine.apply([StackLayer(loras[0]), StackLayer(broken)])
    assert any(s.lora == "broken" and target.module in s.target for s in report.skipped)
    engine.clear()
    assert same_bits(snapshot(model), base)
    del applied


def test_online_matches_fused_outputs(loras) -> None:
    _model, modules = small_model(F)
    stack = [StackLayer(loras[0], unet=0.8, te=0.6), StackLayer(loras[2], unet=-0.5)]
    fused = PatchEngine(modules, mode="fused")
    fused.apply(stack)
    inputs = {}
    outputs = {}
    torch.manual_seed(0)
    for name, module in modules.items():
        if isinstance(module, torch.nn.Linear):
            inputs[name] = torch.randn(3, module.in_features)
        elif isinstance(module, torch.nn.Conv2d):
            inputs[name] = torch.randn(1, module.in_channels, 8, 8)
        else:
            continue
        outputs[name] = module(inputs[name])
    fused.clear()
    online = PatchEngine(modules, mode="online")
    report = online.apply(stack)
    assert report.weight_writes == 0 and report.online_params > 0
    for name, x in inputs.items():
        y = modules[name](x)
        assert (y - outputs[name]).abs().max() <= 1e-5 * outputs[name].abs().max(), name
    online.clear()
    assert all(not m._forward_hooks for m in modules.values())


def test_context_manager_restores_on_exit(loras) -> None:
    model, modules = small_model(F)
    base = snapshot(model)
    engine = PatchEngine(modules)
    with engine.applied([StackLayer(loras[1])]):
        assert not same_bits(snapshot(model), base)
    assert same_bits(snapshot(model), base)


def test_schedule_enters_and_leaves_at_step_boundaries(loras) -> None:
    model, modules = small_model(F)
    engine = PatchEngine(modules)
    stack = [StackLayer(loras[0]), StackLayer(loras[1], start=3, stop=6)]
    engine.apply(stack, step=0)
    only_first = snapshot(model)
    n1 = len([t for t in loras[1].modules])
    entering = engine.set_step(3)
    both = snapshot(model)
    assert 0 < entering.weight_writes <= n1
    assert engine.set_step(4).weight_writes == 0
    leaving = engine.set_step(6)
    assert 0 < leaving.weight_writes <= n1
    assert same_bits(snapshot(model), only_first)
    assert not same_bits(both, only_first)


def test_batched_and_single_paths_give_the_same_bits(loras) -> None:
    from lib_lorastack.engine.device_cache import FactorCache
    from lib_lorastack.engine.fused import batched_low_rank, low_rank_sum, new_value
    from lib_lorastack.engine.plan import build_plan

    _model, modules = small_model(F, dtype=torch.float16)
    stack = [StackLayer(loras[0], unet=0.7), StackLayer(loras[2], unet=-0.3)]
    plans, _ = build_plan(stack, None, modules, lambda m, p: "fused")
    cache = FactorCache()
    by_shape: dict[tuple, list] = {}
    for key, plan in plans.items():
        w0 = getattr(modules[key[0]], key[1]).detach()
        lowrank, rest = low_rank_sum(plan.contributions, cache, torch.float32, w0.device)
        if lowrank is not None and not rest:
            by_shape.setdefault((tuple(w0.shape), lowrank.up.shape[1]), []).append((w0, lowrank, plan))
    groups = [g for g in by_shape.values() if len(g) > 1]
    assert groups
    for group in groups:
        batched = batched_low_rank([w for w, _, _ in group], [lr for _, lr, _ in group])
        for (w0, _, plan), value in zip(group, batched):
            single, _ = new_value(w0, plan.contributions, cache)
            assert torch.equal(single.view(value.shape), value)


def test_resolve_modules_drops_the_webuis_wrapped_segments() -> None:
    from torch import nn

    from lib_lorastack.engine import resolve_modules

    class Wrapper(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.wrapped = inner

    te = nn.Module()
    te.transformer = nn.Module()
    te.transformer.embeddings = nn.Module()
    te.transformer.embeddings.token_embedding = Wrapper(nn.Embedding(10, 4))
    te.transformer.q_proj = nn.Linear(4, 4)
    root = nn.Module()
    root.cond_stage_model = Wrapper(te)
    names = resolve_modules(root)
    assert isinstance(names["cond_stage_model.transformer.q_proj"], nn.Linear)
    assert isinstance(names["cond_stage_model.transformer.embeddings.token_embedding"], nn.Embedding)


def test_auto_mode_goes_online_for_fp8_weights(loras) -> None:
    _model, modules = small_model(F)
    fp8 = [m for m in {t.module for t in loras[0].modules} if isinstance(modules[m], torch.nn.Linear)][:3]
    with torch.no_grad():
        for m in fp8:
            modules[m].weight.data = modules[m].weight.data.to(torch.float8_e4m3fn)
    before = {m: modules[m].weight.detach().clone() for m in fp8}
    engine = PatchEngine(modules, mode="auto")
    report = engine.apply([StackLayer(loras[0])])
    patched = engine.patched()
    assert all(patched[(m, "weight")] == "online" for m in fp8)
    assert report.online_params == len(fp8) and report.fused_params == len(patched) - len(fp8)
    assert all(torch.equal(modules[m].weight.view(torch.uint8), before[m].view(torch.uint8)) for m in fp8)
    engine.clear()


def test_bias_changes_and_created_biases_are_restored() -> None:
    from lib_lorastack.formats.loader import parse_state_dict

    model, modules = small_model(F)
    base = snapshot(model)
    prefix = "lora_unet_down_blocks_0_attentions_0_"
    proj = modules["model.diffusion_model.input_blocks.1.1.proj_out"]
    to_q = modules["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"]
    assert to_q.bias is None
    g = torch.Generator().manual_seed(0)
    sd = {
        f"{prefix}proj_out.diff": torch.randn(proj.weight.shape, generator=g),
        f"{prefix}proj_out.diff_b": torch.randn(proj.bias.shape, generator=g),
        f"{prefix}transformer_blocks_0_attn1_to_q.diff": torch.randn(to_q.weight.shape, generator=g),
        f"{prefix}transformer_blocks_0_attn1_to_q.diff_b": torch.randn(to_q.weight.shape[0], generator=g),
    }
    full = parse_state_dict(sd, family=F, name="full")
    engine = PatchEngine(modules)
    engine.apply([StackLayer(full, unet=0.5)])
    assert torch.allclose(proj.bias, base["model.diffusion_model.input_blocks.1.1.proj_out.bias"] + 0.5 * sd[f"{prefix}proj_out.diff_b"])
    assert to_q.bias is not None
    assert torch.allclose(to_q.bias, 0.5 * sd[f"{prefix}transformer_blocks_0_attn1_to_q.diff_b"])
    engine.apply([StackLayer(full, unet=-1.0)])
    assert torch.allclose(to_q.bias, -sd[f"{prefix}transformer_blocks_0_attn1_to_q.diff_b"])
    engine.clear()
    assert to_q.bias is None
    assert same_bits(snapshot(model), base)
    assert engine.backup_bytes() == 0


def test_openclip_attention_is_exact_online_too() -> None:
    """SD2's OpenCLIP: q/k/v land on in_proj_weight rows and out_proj is read by MHA directly, so both are fused
    even in online mode; the attention output equals the formula's."""
    from lib_lorastack.engine.online import can_go_online
    from tests.helpers.engine_fixtures import SD2_SUBSET

    _model, modules = small_model(Family.SD2, subset=SD2_SUBSET)
    targets = [t for t in subset_targets(Family.SD2, SD2_SUBSET) if "resblocks.0.attn" in t.module]
    assert {t.param for t in targets} == {"in_proj_weight", "weight"}
    lora = make_lora(Family.SD2, targets, name="clip", seed=4)
    mha = modules["cond_stage_model.model.transformer.resblocks.0.attn"]
    assert not can_go_online(mha.out_proj, "weight")
    x = torch.randn(2, 5, mha.embed_dim)
    fused = PatchEngine(modules, mode="fused")
    fused.apply([StackLayer(lora, te=0.6)])
    y_fused = mha(x, x, x, need_weights=False)[0]
    fused.clear()
    online = PatchEngine(modules, mode="online")
    report = online.apply([StackLayer(lora, te=0.6)])
    assert report.online_params == 0 and report.fused_params == 2
    y_online = mha(x, x, x, need_weights=False)[0]
    online.clear()
    y_base = mha(x, x, x, need_weights=False)[0]
    assert (y_fused - y_base).abs().max() > 1e-3
    assert torch.equal(y_fused, y_online)
