"""The benchmark runs: switch, incremental change, clear, online overhead, memory; ours vs diffusers vs the floors
(a plain copy of the touched bytes, the products alone, and on a GPU the host→device copy of the touched bytes)."""

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

from .models import diffusers_modules, diffusers_step_inputs, diffusers_unet, make_loras, realistic_loras, unet_targets


@dataclass
class FamilyResult:
    family: str
    dtype: str
    device: str = "cpu"
    touched_params: int = 0
    touched_mib: float = 0.0
    floor_ms: float = 0.0  # plain copy of the touched weights' bytes
    compute_floor_ms: float = 0.0  # the products alone (fp32, one per weight, same shapes and ranks)
    h2d_floor_ms: float = 0.0  # the touched bytes from pinned CPU memory to the GPU
    ours: dict[str, float] = field(default_factory=dict)  # ms
    ours_cpu_backups: dict[str, float] = field(default_factory=dict)  # ms, backups in (pinned) CPU memory
    diffusers: dict[str, float] = field(default_factory=dict)  # ms
    realistic: dict[str, float] = field(default_factory=dict)  # ms, the mixed stack (LoRA, LoCon, LoHa, DoRA)
    incremental_writes: int = 0
    incremental_expected: int = 0
    online: dict[str, float] = field(default_factory=dict)
    step: dict[str, float] = field(default_factory=dict)  # a whole diffusers UNet step with our engine attached
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
        if self.floor_ms and "clear" in self.ours:
            out["ours_clear / copy_floor"] = self.ours["clear"] / self.floor_ms
        if self.h2d_floor_ms and "switch" in self.ours_cpu_backups:
            out["ours_switch, CPU backups / h2d_floor"] = self.ours_cpu_backups["switch"] / self.h2d_floor_ms
        return out


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def _host_and_total(fn) -> tuple[float, float]:
    """Seconds until ``fn`` returns (the host's work) and until the device is done."""
    _sync()
    start = time.perf_counter()
    fn()
    host = time.perf_counter() - start
    _sync()
    return host, time.perf_counter() - start


def copy_floor(params: list[torch.Tensor], repeats: int) -> float:
    sources = [p.detach().clone() for p in params]
    samples = [_timed(lambda: [p.data.copy_(s) for p, s in zip(params, sources)]) for _ in range(repeats + 1)]
    return _median_ms(samples[1:])


def h2d_floor(params: list[torch.Tensor], repeats: int) -> float:
    """The touched bytes from pinned CPU memory into the weights: what a switch with CPU backups must move."""
    sources = [torch.empty(p.shape, dtype=p.dtype, pin_memory=True).copy_(p.detach()) for p in params]
    samples = [_timed(lambda: [p.data.copy_(s, non_blocking=True) for p, s in zip(params, sources)]) for _ in range(repeats + 1)]
    return _median_ms(samples[1:])


def compute_floor(params: list[torch.Tensor], rank: int, repeats: int) -> float:
    """The products Σ up_i·down_i alone, fp32, one product per weight: what any exact fused patch must compute."""
    work = [
        (torch.randn(p.shape[0], rank, device=p.device), torch.randn(rank, p[0].numel(), device=p.device)) for p in params
    ]
    samples = [_timed(lambda: [torch.mm(u, d) for u, d in work]) for _ in range(repeats + 1)]
    return _median_ms(samples[1:])


def _cycle(engine: PatchEngine, stack_a, stack_b, changed, repeats: int) -> dict[str, float]:
    """apply from clean; the first switch after it (on a GPU: where a CUDA graph is captured); then switches back
    and forth, as when a user tweaks strengths (the figure called "switch"); one LoRA's strength; clear."""
    apply, first, switch, clear, incr, host = [], [], [], [], [], []
    for _ in range(repeats):
        apply.append(_timed(lambda: engine.apply(stack_a)))
        first.append(_timed(lambda: engine.apply(stack_b)))
        for stack in (stack_a, stack_b, stack_a, stack_b):
            h, t = _host_and_total(lambda s=stack: engine.apply(s))
            switch.append(t)
            host.append(h)
        incr.append(_timed(lambda: engine.apply(changed)))
        engine.apply(stack_b)
        clear.append(_timed(engine.clear))
    return {"apply": _median_ms(apply), "switch": _median_ms(switch), "first_switch": _median_ms(first),
            "incremental": _median_ms(incr), "clear": _median_ms(clear), "switch_host": _median_ms(host)}  # fmt: skip


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
    if device != "cpu":
        result.h2d_floor_ms = h2d_floor(params, repeats)

    stack_a = [StackLayer(lora, unet=0.4 + 0.1 * i) for i, lora in enumerate(loras)]
    stack_b = [StackLayer(lora, unet=0.9 - 0.1 * i) for i, lora in enumerate(loras)]
    changed = [*stack_b[:2], StackLayer(loras[2], unet=0.123), *stack_b[3:]]
    engine = PatchEngine(modules)
    engine.apply(stack_a)  # warm-up: factors and programs onto the device, allocator warm
    engine.apply(stack_b)
    engine.clear()
    result.ours = _cycle(engine, stack_a, stack_b, changed, repeats)
    engine.apply(stack_b)
    report = engine.apply(changed)
    result.incremental_writes = report.weight_writes
    result.incremental_expected = len(loras[2].modules)
    result.memory["backup_mib"] = engine.backup_bytes() / 2**20
    result.memory["touched_mib"] = engine.touched_bytes() / 2**20
    engine.clear()
    if device != "cpu":
        result.notes.append(f"CUDA graphs: {engine.graphs.captures} captured, {engine.graphs.replays} replayed"
                            + (f"; capture failed: {engine.graphs.failures[0]}" if engine.graphs.failures else ""))
        cpu_engine = PatchEngine(modules, backup_device="cpu")
        cpu_engine.apply(stack_a)
        cpu_engine.apply(stack_b)
        cpu_engine.clear()
        result.ours_cpu_backups = _cycle(cpu_engine, stack_a, stack_b, changed, repeats)

    # Online vs fused vs base forward, on a sample of touched Linear layers with 1024 tokens.
    sample = [m for m in sorted(targets) if isinstance(modules[m], torch.nn.Linear)][::8]
    x = {m: torch.randn(1024, modules[m].in_features, device=device, dtype=dtype) for m in sample}

    def forward() -> None:
        with torch.no_grad():
            for m in sample:
                modules[m](x[m])

    def forward_ms() -> float:
        forward()
        return _median_ms([_timed(forward) for _ in range(max(5, repeats))])

    base = forward_ms()
    engine.apply(stack_a)
    fused = forward_ms()
    engine.clear()
    online_engine = PatchEngine(modules, mode="online")
    online_engine.apply(stack_a)  # factors into the cache
    online_engine.clear()
    online_apply = _median_ms([_timed(lambda: (online_engine.clear(), online_engine.apply(stack_a))) for _ in range(3)])
    online = forward_ms()
    online_switch = _median_ms([_timed(lambda s=s: online_engine.apply(s)) for s in (stack_b, stack_a, stack_b)])
    online_engine.clear()
    result.online = {"base_forward": base, "fused_forward": fused, "online_forward": online,
                     "fused_overhead_pct": 100 * (fused - base) / base, "online_overhead_pct": 100 * (online - base) / base,
                     "online_apply": online_apply, "online_switch": online_switch, "layers_sampled": len(sample)}  # fmt: skip
    result.memory["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device != "cpu":
        result.memory["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    gc.collect()


def bench_realistic(family: Family, dtype, repeats: int, result: FamilyResult, device: str) -> None:
    """The mixed stack (attention LoRA, LoCon, LoHa, DoRA): apply, switch, clear."""
    files = realistic_loras(family, dtype)
    loras = [parse_state_dict(sd, family=family, name=name) for name, sd in files.items()]
    touched = {t.module for lora in loras for t in lora.modules}
    model = build_skeleton(family, dtype=dtype, device=device, select=lambda n: n in touched)
    engine = PatchEngine(resolve_modules(model))
    stack_a = [StackLayer(lora, unet=0.5 + 0.1 * i) for i, lora in enumerate(loras)]
    stack_b = [StackLayer(lora, unet=0.8 - 0.1 * i) for i, lora in enumerate(loras)]
    engine.apply(stack_a)
    engine.clear()
    apply, switch, clear = [], [], []
    for _ in range(repeats):
        apply.append(_timed(lambda: engine.apply(stack_a)))
        switch.append(_timed(lambda: engine.apply(stack_b)))
        clear.append(_timed(engine.clear))
    result.realistic = {"apply": _median_ms(apply), "switch": _median_ms(switch), "clear": _median_ms(clear),
                        "weights": float(len(engine.patched()) or len(touched))}  # fmt: skip
    gc.collect()


def bench_step(family: Family, loras_sd, dtype, unet, device: str, repeats: int, result: FamilyResult) -> None:
    """A whole diffusers UNet step (real config) with no LoRA, with our engine online, and fused."""
    loras = [parse_state_dict(sd, family=family, name=f"lora{i}") for i, sd in enumerate(loras_sd)]
    modules = diffusers_modules(unet, family, unet_targets(family))
    inputs = diffusers_step_inputs(family, dtype, device)
    stack = [StackLayer(lora, unet=0.4 + 0.1 * i) for i, lora in enumerate(loras)]

    def step_ms() -> float:
        with torch.no_grad():
            unet(**inputs)
            return _median_ms([_timed(lambda: unet(**inputs)) for _ in range(max(7, repeats))])

    with torch.no_grad():  # bring the clocks up before the first figure
        for _ in range(10):
            unet(**inputs)
    base = step_ms()
    online_engine = PatchEngine(modules, mode="online")
    online_engine.apply(stack)
    online = step_ms()
    online_engine.clear()
    fused_engine = PatchEngine(modules)
    fused_engine.apply(stack)
    fused = step_ms()
    fused_engine.clear()
    base = (base + step_ms()) / 2  # before and after, against drift
    result.step = {"base": base, "online": online, "fused": fused, "online_pct": 100 * (online - base) / base,
                   "fused_pct": 100 * (fused - base) / base, "layers": float(len(modules))}  # fmt: skip


def bench_diffusers(family: Family, loras_sd, dtype, repeats: int, result: FamilyResult, unet, step_inputs: dict | None = None) -> None:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

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

    if step_inputs is not None:  # diffusers' online mode: PEFT layers unfused, the LoRAs computed in the forward
        with torch.no_grad():
            pipe.set_adapters(names, wa)
            unet(**step_inputs)
            result.diffusers["online_step"] = _median_ms([_timed(lambda: unet(**step_inputs)) for _ in range(max(7, repeats))])
        result.diffusers["online_switch"] = _median_ms([_timed(lambda w=w: pipe.set_adapters(names, w)) for w in (wb, wa, wb)])

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
    family: Family,
    *,
    repeats: int,
    dtype: torch.dtype,
    with_diffusers: bool,
    device: str,
    limit: int | None = None,
    realistic: bool = True,
    step: bool | None = None,
) -> FamilyResult:
    """``limit``: only the first N target layers (smoke tests). ``step``: measure a whole diffusers UNet step
    (default: on a GPU only)."""
    result = FamilyResult(family.value, str(dtype).removeprefix("torch."), device)
    loras_sd = make_loras(family, dtype=dtype, limit=limit)
    bench_ours(family, loras_sd, dtype, repeats, result, device, limit)
    if realistic and limit is None:
        bench_realistic(family, dtype, repeats, result, device)
    step = device != "cpu" if step is None else step
    if with_diffusers or step:
        try:
            unet = diffusers_unet(family, dtype, device)
            if step:
                bench_step(family, loras_sd, dtype, unet, device, repeats, result)
            if with_diffusers:
                inputs = diffusers_step_inputs(family, dtype, device) if step else None
                bench_diffusers(family, loras_sd, dtype, max(1, repeats // 2), result, unet, inputs)
        except Exception as exc:  # the peer's failure must not lose our own figures
            result.notes.append(f"diffusers part failed: {type(exc).__name__}: {exc}"[:400])
        unet = None
        gc.collect()
        if device != "cpu":
            torch.cuda.empty_cache()
    return result


def bench_lycoris(family: Family, repeats: int, algos: tuple[str, ...] = ("locon", "lokr", "loha"), device: str = "cpu") -> dict:
    """Apply from clean, strength change and clear of one lycoris-lora file (``models.lycoris_file``) on every
    Linear/Conv2d weight of the UNet, fp32: ms per touched GiB against a plain copy of the same bytes."""
    from .models import lycoris_file

    files = {algo: parse_state_dict(lycoris_file(family, algo), family=family, name=algo) for algo in algos}
    touched = {t.module for lora in files.values() for t in lora.modules}
    model = build_skeleton(family, dtype=torch.float32, device=device, select=lambda n: n in touched)
    modules = resolve_modules(model)
    params = [modules[m].weight for m in sorted(touched)]
    gib = sum(p.numel() * p.element_size() for p in params) / 2**30
    out: dict = {"weights": len(params), "touched_gib": gib, "copy_floor": copy_floor(params, repeats)}
    engine = PatchEngine(modules)
    for algo, lora in files.items():
        a, b = [StackLayer(lora, unet=0.7)], [StackLayer(lora, unet=0.4)]
        engine.apply(a)  # warm-up: factors, programs
        engine.clear()
        apply, switch, clear = [], [], []
        for _ in range(repeats):
            apply.append(_timed(lambda a=a: engine.apply(a)))
            switch.append(_timed(lambda b=b: engine.apply(b)))
            clear.append(_timed(engine.clear))
        out[algo] = {"apply": _median_ms(apply), "switch": _median_ms(switch), "clear": _median_ms(clear)}
    engine.forget_loras()
    gc.collect()
    return out
