"""The patch engine on WebUI-named models: exact math, bitwise restore, incremental writes, transactions."""

from __future__ import annotations

import math
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
    assert all(not m._forward_hooks and "forward" not in m.__dict__ for m in modules.values())


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


def test_a_weights_bits_do_not_depend_on_grouping_order_or_path(loras, monkeypatch) -> None:
    """One per-weight function computes every fused value: from scratch, incrementally, in another stack order,
    one weight at a time, and in the rollback of a failed apply, a weight gets the same bits."""
    import lib_lorastack.engine.engine as engine_module

    calls: list[tuple[str, str]] = []
    real = engine_module.write_fused

    def spy(param, w0, program, plan, scale, **kw):
        calls.append(plan.key)
        return real(param, w0, program, plan, scale, **kw)

    monkeypatch.setattr(engine_module, "write_fused", spy)
    model, modules = small_model(F, dtype=torch.float16)
    full = [StackLayer(loras[0], unet=0.7), StackLayer(loras[1], te=0.3, unet=-0.4), StackLayer(loras[2], unet=1.2)]
    engine = PatchEngine(modules)
    engine.apply(full)
    scratch = snapshot(model)
    engine.clear()
    for n in range(1, len(full) + 1):  # grown one LoRA at a time
        engine.apply(full[:n])
    assert same_bits(snapshot(model), scratch)
    engine.apply(list(reversed(full)))
    assert same_bits(snapshot(model), scratch)
    for key, plan in engine._applied.items():  # one weight alone, through the public single-weight path
        engine.write_one(key, plan)
    assert same_bits(snapshot(model), scratch)
    calls.clear()
    engine._fail_after_writes = 7
    with pytest.raises(PatchError):
        engine.apply([StackLayer(loras[3]), *full[:2]])
    assert same_bits(snapshot(model), scratch)
    rolled_back = {k for k in calls}
    assert len(rolled_back) >= 7  # the writes before the fault and their rollback all went through write_fused
    engine.clear()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_split_products_are_exact_to_fp32_accuracy(dtype) -> None:
    """The GPU's split path: the scaled up factor as fp16 hi + lo (bf16: hi + mid + lo) times the repeated down
    factor loses nothing an fp32 product keeps. Emulated here in float64 on the split parts."""
    from lib_lorastack.engine.fused import SPLIT_PARTS, split_operand, split_rows

    g = torch.Generator().manual_seed(0)
    for out, rank, fan_in in ((320, 32, 320), (1280, 160, 640)):
        up_t = ((torch.randn(rank, out, generator=g) * 0.02).to(dtype).float() * 0.5)  # file values × alpha/rank
        down = (torch.randn(rank, fan_in, generator=g) * 0.02).to(dtype)
        scale = torch.rand(rank, generator=g) * 3 - 1
        exponent = math.floor(math.log2(1024 / up_t.abs().max().item())) if dtype is torch.float16 else 0
        split = split_rows(up_t * (scale * 2.0**exponent).view(-1, 1), dtype)
        operand = split_operand(split, 0, rank)
        emulated = (operand.double() @ down.repeat_interleave(SPLIT_PARTS[dtype], 0).double()) * 2.0**-exponent
        exact = (up_t.double() * scale.double().view(-1, 1)).t() @ down.double()
        fp32 = (up_t * scale.view(-1, 1)).t() @ down.float()
        err_split = ((emulated - exact).norm() / exact.norm()).item()
        err_fp32 = ((fp32.double() - exact).norm() / exact.norm()).item()
        assert err_split < 1e-6 and err_split < 4 * err_fp32 + 1e-9, (err_split, err_fp32)


def test_a_weights_split_operand_does_not_depend_on_its_group() -> None:
    """Prepared with other weights or alone, a weight's split operand has the same values, shape and strides (so
    the GPU runs the same GEMM for it)."""
    from lib_lorastack.engine.fused import WeightProgram, prepare_split

    g = torch.Generator().manual_seed(1)

    def program(rank: int) -> WeightProgram:
        p = WeightProgram(("m", "weight"), (), torch.Size([320, 64]), torch.device("cpu"), [0], [rank], [])
        p.up_t = (torch.randn(rank, 320, generator=g) * 0.02).half().float()
        return p

    programs = [program(8), program(16), program(4)]
    scales = [torch.rand(p.rank, generator=g) for p in programs]
    together = prepare_split(programs, torch.cat(scales), torch.float16)
    for p, s, op in zip(programs, scales, together):
        alone = prepare_split([p], s, torch.float16)[0]
        assert torch.equal(op, alone) and op.shape == alone.shape and op.stride() == alone.stride()


def test_per_sample_strengths_equal_separate_runs(loras) -> None:
    """One batch, two images, different strengths: each row equals that image's stack applied alone."""
    _model, modules = small_model(F)
    name = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"
    conv = "model.diffusion_model.input_blocks.1.1.proj_in"
    a = [StackLayer(loras[0], unet=0.8), StackLayer(loras[2], unet=-0.5)]
    b = [StackLayer(loras[0], unet=0.1)]
    x = torch.randn(2, 7, modules[name].in_features)
    xc = torch.randn(2, modules[conv].in_channels, 4, 4)
    engine = PatchEngine(modules, mode="online")
    want = []
    for stack in (a, b):
        engine.apply(stack)
        want.append((modules[name](x), modules[conv](xc)))
    engine.clear()
    engine.apply_per_sample([a, b])
    got, gotc = modules[name](x), modules[conv](xc)
    for i in range(2):
        assert torch.allclose(got[i], want[i][0][i], atol=1e-5), i
        assert torch.allclose(gotc[i], want[i][1][i], atol=1e-5), i
    # cond + uncond: twice the rows, the scales repeat
    twice = modules[name](torch.cat([x, x]))
    assert torch.allclose(twice[2], want[0][0][0], atol=1e-5)
    engine.clear()
    assert all("forward" not in m.__dict__ for m in modules.values())


def test_per_sample_strengths_on_fused_only_layers_must_agree() -> None:
    from tests.helpers.engine_fixtures import SD2_SUBSET

    _model, modules = small_model(Family.SD2, subset=SD2_SUBSET)
    targets = [t for t in subset_targets(Family.SD2, SD2_SUBSET) if "resblocks.0.attn" in t.module]
    lora = make_lora(Family.SD2, targets, name="clip", seed=4)
    engine = PatchEngine(modules, mode="online")
    with pytest.raises(PatchError, match="only be fused"):
        engine.apply_per_sample([[StackLayer(lora, te=0.2)], [StackLayer(lora, te=0.9)]])
    assert not engine.patched()
    report = engine.apply_per_sample([[StackLayer(lora, te=0.5)], [StackLayer(lora, te=0.5)]])
    assert report.fused_params == 2
    engine.clear()


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


def test_split_path_end_to_end_on_the_cpu(loras, monkeypatch) -> None:
    """The GPU's split path (grouped operands, one half-precision product per weight) forced on the CPU: right values, and the same
    bits from scratch, incrementally and after a rollback."""
    import lib_lorastack.engine.batch as batch_module
    import lib_lorastack.engine.engine as engine_module
    from lib_lorastack.engine import fused

    def forced(program, strengths, param, half_products):
        if program.up_t is not None and program.half_dtype is not None:
            return fused.SPLIT
        return fused.FP32

    monkeypatch.setattr(engine_module, "choose_path", forced)
    monkeypatch.setattr(fused, "half_product", lambda a, b: a.float() @ b.float())  # the CPU has no mm(out_dtype=)
    monkeypatch.setattr(batch_module, "CHUNK_BYTES", 1 << 16)  # many chunks
    half = [make_lora(F, subset_targets(F)[i::2], name=f"half{i}", seed=20 + i, rank=3 + i, alpha=2.0) for i in range(3)]
    for lora in half:
        for adapter in lora.modules.values():
            for k in ("lora_up.weight", "lora_down.weight"):
                adapter.tensors[k] = adapter.tensors[k].half()
    model, modules = small_model(F, dtype=torch.float16)
    base = snapshot(model)
    stack = [StackLayer(half[0], unet=0.6, te=0.4), StackLayer(half[1], unet=-0.3), StackLayer(half[2], unet=1.4)]
    engine = PatchEngine(modules)
    engine.apply(stack)
    want = reference({k: v.float() for k, v in base.items()}, stack)
    got = snapshot(model)
    for k in base:
        assert (got[k].double() - want[k]).abs().max() <= 2e-3 * want[k].abs().max() + 1e-3, k
    scratch = snapshot(model)
    engine.clear()
    engine.apply(stack[:1])
    engine.apply(stack)
    assert same_bits(snapshot(model), scratch)
    engine._fail_after_writes = 5
    with pytest.raises(PatchError):
        engine.apply([StackLayer(half[1], unet=0.9), StackLayer(half[2])])
    assert same_bits(snapshot(model), scratch)
    engine.clear()
    assert same_bits(snapshot(model), base)


def test_fast_switch_computes_the_scale_buffer_planning_would(loras) -> None:
    """The steady-state switch skips planning: its strengths and scale buffer must be the very bits that planning
    and ``WriteBatch`` give for a stack of the same structure (block weights and schedules included)."""
    from lib_lorastack.engine.batch import Write, WriteBatch
    from lib_lorastack.engine.fast import FastSwitch, structure
    from lib_lorastack.engine.fused import FP32
    from lib_lorastack.engine.plan import build_plan
    from lib_lorastack.syntax.lbw import resolve_block_weights

    _model, modules = small_model(F)
    engine = PatchEngine(modules)
    outall = resolve_block_weights(F, "OUTALL").weight_for
    half = resolve_block_weights(F, "1,0.5,0.5,0.5,0.5,0.5,0.5,1,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3").weight_for

    def batch_for(stack):
        plans, _ = build_plan(stack, 3, engine._binder, engine._choose_mode, engine._blocks)
        writes = [Write(k, p, engine._param(k), engine.program(p, engine._param(k)), FP32) for k, p in sorted(plans.items())]
        return WriteBatch(writes, torch.float32)

    first = [StackLayer(loras[0], te=0.7, unet=0.9, block_weight=outall), StackLayer(loras[1], unet=-0.4, start=2),
             StackLayer(loras[2], te=0.3, unet=1.7, block_weight=half)]
    second = [StackLayer(loras[0], te=-0.2, unet=1.3, block_weight=resolve_block_weights(F, "OUTALL").weight_for),
              StackLayer(loras[1], unet=0.123, start=2), StackLayer(loras[2], te=1.1, unet=0.37, block_weight=half)]
    assert structure(first, 3) == structure(second, 3)
    fast = FastSwitch.from_batch(first, 3, batch_for(first), graph=None, blocks=engine._blocks)  # type: ignore[arg-type]
    strengths = fast.strengths(second)
    expected = batch_for(second)
    got = torch.repeat_interleave((strengths * fast.multiplier).to(torch.float32), fast.ranks)
    assert torch.equal(got, expected.host_scale)
    assert structure([*second[:2], StackLayer(loras[2], te=0.0, unet=0.37, block_weight=half)], 3) != structure(first, 3)
