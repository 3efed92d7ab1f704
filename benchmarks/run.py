"""The benchmark runs: switch, incremental change, online overhead, memory; ours vs diffusers vs a plain copy."""

from __future__ import annotations

import gc
import resource
import statistics
import time
from dataclasses import dataclass, field

import torch

from lib_lorastack.engine import PatchEngine, StackLayer, resolve_modules
from lib_lorastack.formats.loader import parse_state_dict
from lib_lorastack.formats.targets import Family
from lib_lorastack.tools.skeleton import build_skeleton

from .models import diffusers_unet, make_loras, unet_targets


@dataclass
class FamilyResult:
    family: str
    dtype: str
    touched_params: int = 0
    touched_mib: float = 0.0
    floor_ms: float = 0.0  # plain copy of the touched weights' bytes
    compute_floor_ms: float = 0.0  # the matrix products alone (same shapes and ranks, one batched product per shape)
    ours: dict[str, float] = field(default_factory=dict)  # ms
    diffusers: dict[str, float] = field(default_factory=dict)  # ms
    incremental_writes: int = 0
    incremental_expected: int = 0
    online: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def ratios(self) -> dict[str, float]:
        out = {}
        if self.floor_ms and "switch" in self.ours:
            out["ours_switch / copy_floor"] = self.ours["switch"] / self.floor_ms
        if self.compute_floor_ms and "switch" in self.ours:
            out["ours_switch / (copy + matmul floor)"] = self.ours["switch"] / (self.floor_ms + self.compute_floor_ms)
        if "switch" in self.diffusers and "switch" in self.ours:
            out["diffusers_switch / ours_switch"] = self.diffusers["switch"] / self.ours["switch"]
        if "apply" in self.diffusers and "apply" in self.ours:
            out["diffusers_apply / ours_apply"] = self.diffusers["apply"] / self.ours["apply"]
        return out


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def copy_floor(params: list[torch.Tensor], repeats: int) -> float:
    sources = [p.detach().clone() for p in params]
    samples = []
    for _ in range(repeats + 1):
        samples.append(_timed(lambda: [p.data.copy_(s) for p, s in zip(params, sources)]))
    return _median_ms(samples[1:])


def compute_floor(params: list[torch.Tensor], rank: int, repeats: int) -> float:
    """The products Σ up_i·down_i alone, fp32, batched per shape: what any exact fused patch must compute."""
    by_shape: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        by_shape.setdefault(tuple(p.shape), []).append(p)
    work = []
    for shape, group in by_shape.items():
        out, fan_in = shape[0], group[0][0].numel()
        k = len(group)
        work.append((torch.randn(k, out, rank, device=group[0].device), torch.randn(k, rank, fan_in, device=group[0].device)))
    samples = [_timed(lambda: [torch.bmm(u, d) for u, d in work]) for _ in range(repeats + 1)]
    return _median_ms(samples[1:])


def bench_ours(
    family: Family, loras_sd, dtype, repeats: int, result: FamilyResult, device: str, limit: int | None = None
) -> None:
    targets = {t.module for t in unet_targets(family, limit)}
    keep = (lambda n: n in targets) if limit else (lambda n: n.startswith("model.diffusion_model."))
    model = build_skeleton(family, dtype=dtype, device=device, select=keep)
    modules = resolve_modules(model)
    loras = [parse_state_dict(sd, family=family, name=f"lora{i}") for i, sd in enumerate(loras_sd)]
    params = [modules[m].weight for m in sorted(targets)]
    result.touched_params = len(params)
    result.touched_mib = sum(p.numel() * p.element_size() for p in params) / 2**20
    result.floor_ms = copy_floor(params, repeats)
    result.compute_floor_ms = compute_floor(params, 32 * len(loras), repeats)

    stack_a = [StackLayer(lora, unet=0.4 + 0.1 * i) for i, lora in enumerate(loras)]
    stack_b = [StackLayer(lora, unet=0.9 - 0.1 * i) for i, lora in enumerate(loras)]
    engine = PatchEngine(modules, backup_device="device" if device != "cpu" else "cpu")
    engine.apply(stack_a)  # warm-up: factors onto the device, allocator warm
    engine.clear()
    apply, switch, clear, incr = [], [], [], []
    for _ in range(repeats):
        apply.append(_timed(lambda: engine.apply(stack_a)))
        switch.append(_timed(lambda: engine.apply(stack_b)))
        changed = [*stack_b[:2], StackLayer(loras[2], unet=0.123), *stack_b[3:]]
        t = time.perf_counter()
        report = engine.apply(changed)
        incr.append(time.perf_counter() - t)
        engine.apply(stack_b)
        result.memory["backup_mib"] = engine.backup_bytes() / 2**20
        result.memory["touched_mib"] = engine.touched_bytes() / 2**20
        clear.append(_timed(engine.clear))
    result.incremental_writes = report.weight_writes
    result.incremental_expected = len(loras[2].modules)
    result.ours = {"apply": _median_ms(apply), "switch": _median_ms(switch), "incremental": _median_ms(incr),
                   "clear": _median_ms(clear)}  # fmt: skip

    # Online vs fused vs base forward, on a sample of touched Linear layers with 1024 tokens.
    sample = [m for m in sorted(targets) if isinstance(modules[m], torch.nn.Linear)][::8]
    x = {m: torch.randn(1024, modules[m].in_features, device=device, dtype=dtype) for m in sample}

    def forward() -> None:
        with torch.no_grad():
            for m in sample:
                modules[m](x[m])

    def forward_ms() -> float:
        forward()
        return _median_ms([_timed(forward) for _ in range(max(3, repeats))])

    base = forward_ms()
    engine.apply(stack_a)
    fused = forward_ms()
    engine.clear()
    online_engine = PatchEngine(modules, mode="online")
    online_apply = _timed(lambda: online_engine.apply(stack_a)) * 1000
    online = forward_ms()
    online_switch = _timed(lambda: online_engine.apply(stack_b)) * 1000
    online_engine.clear()
    result.online = {"base_forward": base, "fused_forward": fused, "online_forward": online,
                     "fused_overhead_pct": 100 * (fused - base) / base, "online_overhead_pct": 100 * (online - base) / base,
                     "online_apply": online_apply, "online_switch": online_switch, "layers_sampled": len(sample)}  # fmt: skip
    result.memory["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gc.collect()


def bench_diffusers(family: Family, loras_sd, dtype, repeats: int, result: FamilyResult) -> None:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    unet = diffusers_unet(family, dtype)
    if family is Family.SDXL:
        pipe = StableDiffusionXLPipeline(vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
                                         unet=unet, scheduler=None)  # fmt: skip
    else:
        pipe = StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=None,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    names = []
    for i, sd in enumerate(loras_sd):
        pipe.load_lora_weights({k: v.clone() for k, v in sd.items()}, adapter_name=f"l{i}")
        names.append(f"l{i}")
    wa = [0.4 + 0.1 * i for i in range(len(names))]
    wb = [0.9 - 0.1 * i for i in range(len(names))]
    wc = [*wb[:2], 0.123, *wb[3:]]

    def fuse(weights):
        pipe.set_adapters(names, weights)
        pipe.fuse_lora(components=["unet"], adapter_names=names)

    apply, switch, incr, clear = [], [], [], []
    for _ in range(repeats):
        apply.append(_timed(lambda: fuse(wa)))
        switch.append(_timed(lambda: (pipe.unfuse_lora(components=["unet"]), fuse(wb))))
        incr.append(_timed(lambda: (pipe.unfuse_lora(components=["unet"]), fuse(wc))))
        clear.append(_timed(lambda: pipe.unfuse_lora(components=["unet"])))
    result.diffusers = {"apply": _median_ms(apply), "switch": _median_ms(switch), "incremental": _median_ms(incr),
                        "clear": _median_ms(clear)}  # fmt: skip
    gc.collect()


def run_family(
    family: Family, *, repeats: int, dtype: torch.dtype, with_diffusers: bool, device: str, limit: int | None = None
) -> FamilyResult:
    """``limit``: only the first N target layers (smoke tests)."""
    result = FamilyResult(family.value, str(dtype).removeprefix("torch."))
    loras_sd = make_loras(family, dtype=dtype, limit=limit)
    bench_ours(family, loras_sd, dtype, repeats, result, device, limit)
    if with_diffusers:
        bench_diffusers(family, loras_sd, dtype, max(1, repeats // 2), result)
    return result
