"""Flux.1 benchmark (issue 15): fused apply/switch/clear of a 5-LoRA rank-32 stack on a reduced-depth Flux skeleton
(Forge's names and real widths from flux1.json) vs diffusers ``set_adapters`` + ``fuse_lora``/``unfuse_lora`` on a
``FluxTransformer2DModel`` of the same depth; the online per-step overhead on the same layers vs the layer's own
forward, and vs re-merging the weight in every forward (what Forge's online LoRA does for quantized weights);
memory. ``python -m benchmarks.flux [--double 1 --single 1 --repeats 3]``; figures in benchmarks/README.md."""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lib_lorastack.engine import PatchEngine, StackLayer, resolve_modules
from lib_lorastack.formats.loader import parse_state_dict
from lib_lorastack.formats.model_tables import load_table
from lib_lorastack.formats.targets import Family, Target
from lib_lorastack.formats.writers import kohya_lora
from lib_lorastack.tools.skeleton import build_skeleton, flux_select

from .run import _cycle, _median_ms, _timed, compute_floor, copy_floor

FLUX = Family.FLUX
LORAS, RANK = 5, 32
# diffusers' FluxTransformer2DModel config of FLUX.1-dev (its transformer/config.json), depth set per run
DIFFUSERS_FLUX = {"patch_size": 1, "in_channels": 64, "attention_head_dim": 128, "num_attention_heads": 24,
                  "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
                  "axes_dims_rope": (16, 56, 56)}  # fmt: skip


@dataclass
class FluxResult:
    double: int
    single: int
    dtype: str
    device: str
    img_tokens: int
    txt_tokens: int
    touched_params: int = 0
    touched_mib: float = 0.0
    floor_ms: float = 0.0
    compute_floor_ms: float = 0.0
    ours: dict[str, float] = field(default_factory=dict)
    diffusers: dict[str, float] = field(default_factory=dict)
    online: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def ratios(self) -> dict[str, float]:
        out = {}
        if self.floor_ms and "switch" in self.ours:
            out["ours_switch / copy_floor"] = self.ours["switch"] / self.floor_ms
            out["ours_switch / (copy + matmul floor)"] = self.ours["switch"] / (self.floor_ms + self.compute_floor_ms)
        for step in ("apply", "switch", "clear"):
            if step in self.diffusers and self.ours.get(step):
                out[f"diffusers_{step} / ours_{step}"] = self.diffusers[step] / self.ours[step]
        o = self.online
        if o.get("base_ms"):
            out["online / base forward"] = o["online_ms"] / o["base_ms"]
            out["re-merge every forward / base"] = o["remerge_ms"] / o["base_ms"]
            out["re-merge every forward / online"] = o["remerge_ms"] / o["online_ms"]
        return out


def flux_targets(double: int, single: int, only: tuple[str, ...] | None = None) -> list[Target]:
    """Every Linear of the first ``double`` double and ``single`` single blocks (what kohya's Flux LoRA trains:
    qkv, proj, mlp, mod of img and txt; linear1, linear2, modulation), in model order; ``only``: names ending so."""
    keep = flux_select(double, single, top=False)
    names = [n for n, info in load_table(FLUX).modules.items() if keep(n) and info.type == "Linear"]
    return [Target(n) for n in names if only is None or n.endswith(only)]


def make_flux_loras(targets: list[Target], dtype: torch.dtype) -> list[dict[str, torch.Tensor]]:
    return [kohya_lora(FLUX, targets, rank=RANK, alpha=16.0, seed=300 + i, dtype=dtype, std=0.02) for i in range(LORAS)]


def tokens_for(module: str, img: int, txt: int) -> int:
    """Rows one step feeds the layer: image tokens (img_*), text tokens (txt_*), both (single blocks), one
    modulation vector per sample (``*_mod.lin``, ``modulation.lin``)."""
    if module.endswith(("mod.lin", "modulation.lin")):
        return 1
    if ".single_blocks." in module:
        return img + txt
    return txt if ".txt_" in module else img


def _remerge_forward(module: torch.nn.Linear, pairs: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor):
    """Forge-style online LoRA: W' = W + Σ s·up·down in fp32 at every call, cast back, then the layer's linear."""
    w = module.weight.float()
    for up, down in pairs:
        w = torch.addmm(w, up, down)
    return F.linear(x, w.to(module.weight.dtype), module.bias)


def bench_online(modules, stack, loras, result: FluxResult, repeats: int, device: str, dtype) -> None:
    names = [t.module for t in loras[0].modules]
    x = {m: torch.randn(tokens_for(m, result.img_tokens, result.txt_tokens), modules[m].in_features, device=device, dtype=dtype)
         for m in names}  # fmt: skip

    def forward() -> None:
        with torch.no_grad():
            for m in names:
                modules[m](x[m])

    def forward_ms() -> float:
        forward()
        return _median_ms([_timed(forward) for _ in range(max(3, repeats))])

    base = forward_ms()
    engine = PatchEngine(modules, mode="online")
    engine.apply(stack)
    engine.clear()
    apply = _median_ms([_timed(lambda: (engine.clear(), engine.apply(stack))) for _ in range(3)])
    online = forward_ms()
    strengths = [StackLayer(layer.lora, te=layer.te, unet=layer.unet * 0.9) for layer in stack]
    change = _median_ms([_timed(lambda s=s: engine.apply(s)) for s in (strengths, stack, strengths)])
    engine.clear()
    factors = {m: [] for m in names}
    for layer in stack:
        for target, adapter in layer.lora.modules.items():
            up, down = adapter.low_rank_factors(dtype=torch.float32, device=device)
            factors[target.module].append((up * layer.strength_for(target), down))

    def remerge() -> None:
        with torch.no_grad():
            for m in names:
                _remerge_forward(modules[m], factors[m], x[m])

    remerge()
    remerge_ms = _median_ms([_timed(remerge) for _ in range(max(3, repeats))])
    base = (base + forward_ms()) / 2  # before and after, against drift
    result.online = {"base_ms": base, "online_ms": online, "online_pct": 100 * (online - base) / base,
                     "remerge_ms": remerge_ms, "remerge_pct": 100 * (remerge_ms - base) / base,
                     "online_apply_ms": apply, "online_strength_change_ms": change, "layers": float(len(names))}  # fmt: skip


def diffusers_flux(double: int, single: int, dtype, device: str):
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(num_layers=double, num_single_layers=single, **DIFFUSERS_FLUX)
    model = model.to_empty(device=device).to(dtype)
    g = torch.Generator(device="cpu").manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():  # any finite weights: fusing costs the same
            p.copy_((torch.rand(p.shape, generator=g) - 0.5).to(dtype) * 0.02)
    return model


def bench_diffusers(loras_sd, result: FluxResult, repeats: int, device: str, dtype) -> None:
    from diffusers import FluxPipeline

    model = diffusers_flux(result.double, result.single, dtype, device)
    pipe = FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=model)  # fmt: skip
    names = []
    for i, sd in enumerate(loras_sd):
        pipe.load_lora_weights({k: v.clone() for k, v in sd.items()}, adapter_name=f"l{i}")
        names.append(f"l{i}")
    wa = [0.4 + 0.1 * i for i in range(len(names))]
    wb = [0.9 - 0.1 * i for i in range(len(names))]

    def fuse(weights) -> None:
        pipe.set_adapters(names, weights)
        pipe.fuse_lora(components=["transformer"], adapter_names=names)

    apply, switch, clear = [], [], []
    for _ in range(repeats):
        apply.append(_timed(lambda: fuse(wa)))
        switch.append(_timed(lambda: (pipe.unfuse_lora(components=["transformer"]), fuse(wb))))
        clear.append(_timed(lambda: pipe.unfuse_lora(components=["transformer"])))
    result.diffusers = {"apply": _median_ms(apply), "switch": _median_ms(switch), "clear": _median_ms(clear)}


def run_flux(
    double: int = 1,
    single: int = 1,
    *,
    repeats: int = 3,
    dtype: torch.dtype = torch.bfloat16,
    device: str = "cpu",
    with_diffusers: bool = True,
    img_tokens: int | None = None,
    txt_tokens: int | None = None,
    only: tuple[str, ...] | None = None,
) -> FluxResult:
    """``only``: just the layers whose names end so (smoke tests). Tokens per step default to a 1024² image (4096 image,
    512 text tokens) on a GPU and a sixteenth of that on the CPU (the ratios hardly depend on it)."""
    cpu = device == "cpu"
    img = img_tokens or (256 if cpu else 4096)
    txt = txt_tokens or (32 if cpu else 512)
    result = FluxResult(double, single, str(dtype).removeprefix("torch."), device, img, txt)
    targets = flux_targets(double, single, only)
    loras_sd = make_flux_loras(targets, dtype)
    wanted = {t.module for t in targets}
    model = build_skeleton(FLUX, dtype=dtype, device=device, select=lambda n: n in wanted)
    modules = resolve_modules(model)
    loras = [parse_state_dict(sd, family=FLUX, name=f"lora{i}") for i, sd in enumerate(loras_sd)]
    params = [modules[t.module].weight for t in targets]
    result.touched_params = len(params)
    result.touched_mib = sum(p.numel() * p.element_size() for p in params) / 2**20
    result.floor_ms = copy_floor(params, repeats)
    result.compute_floor_ms = compute_floor(params, RANK * LORAS, repeats)
    stack_a = [StackLayer(lora, unet=0.4 + 0.1 * i) for i, lora in enumerate(loras)]
    stack_b = [StackLayer(lora, unet=0.9 - 0.1 * i) for i, lora in enumerate(loras)]
    changed = [*stack_b[:2], StackLayer(loras[2], unet=0.123), *stack_b[3:]]
    engine = PatchEngine(modules)
    engine.apply(stack_a)  # warm-up
    engine.apply(stack_b)
    engine.clear()
    result.ours = _cycle(engine, stack_a, stack_b, changed, repeats)
    engine.apply(stack_b)
    result.memory["backup_mib"] = engine.backup_bytes() / 2**20
    result.memory["touched_mib"] = engine.touched_bytes() / 2**20
    engine.clear()
    engine.forget_loras()
    bench_online(modules, stack_a, loras, result, repeats, device, dtype)
    result.memory["lora_factors_mib"] = sum(a.nbytes() for lora in loras for a in lora.modules.values()) / 2**20
    result.memory["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if not cpu:
        result.memory["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    del engine, model, modules
    gc.collect()
    if with_diffusers:
        try:
            bench_diffusers(loras_sd, result, max(1, repeats), device, dtype)
        except Exception as exc:  # the peer's failure must not lose our own figures
            result.notes.append(f"diffusers part failed: {type(exc).__name__}: {exc}"[:400])
        gc.collect()
    return result


def show(r: FluxResult) -> str:
    lines = [f"== Flux, {r.double} double + {r.single} single blocks ({r.dtype}, {r.device}): {r.touched_params} weights, "
             f"{r.touched_mib:.0f} MiB; {LORAS} kohya LoRAs rank {RANK} on every one"]  # fmt: skip
    lines.append(f"   copy floor {r.floor_ms:.1f} ms, fp32 matmul floor {r.compute_floor_ms:.1f} ms")
    for step in ("apply", "switch", "incremental", "clear"):
        d = r.diffusers.get(step)
        lines.append(f"   {step:12s} ours {r.ours.get(step, float('nan')):9.1f} ms" + (f"   diffusers {d:9.1f} ms" if d else ""))
    o = r.online
    if o:
        lines.append(f"   one step's forward of the {o['layers']:.0f} layers ({r.img_tokens} image + {r.txt_tokens} text tokens): "
                     f"base {o['base_ms']:.1f} ms, online {o['online_ms']:.1f} ms ({o['online_pct']:+.1f} %), "
                     f"re-merge every forward {o['remerge_ms']:.1f} ms ({o['remerge_pct']:+.1f} %)")  # fmt: skip
        lines.append(f"   online: apply {o['online_apply_ms']:.1f} ms, strength change {o['online_strength_change_ms']:.1f} ms")
    for k, v in r.ratios().items():
        lines.append(f"   {k:38s} {v:7.2f}×")
    m = r.memory
    lines.append(f"   memory: backups {m.get('backup_mib', 0):.0f} MiB = touched {m.get('touched_mib', 0):.0f} MiB; "
                 f"LoRA factors {m.get('lora_factors_mib', 0):.0f} MiB; peak RSS {m.get('peak_rss_mib', 0):.0f} MiB"
                 + (f"; peak GPU {m['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in m else ""))  # fmt: skip
    lines += [f"   note: {n}" for n in r.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from .__main__ import machine

    p = argparse.ArgumentParser(prog="python -m benchmarks.flux")
    p.add_argument("--double", type=int, default=1, help="double blocks (19 in Flux.1)")
    p.add_argument("--single", type=int, default=1, help="single blocks (38 in Flux.1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--img-tokens", type=int)
    p.add_argument("--txt-tokens", type=int)
    p.add_argument("--no-diffusers", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"machine: {machine()}")
    r = run_flux(args.double, args.single, repeats=args.repeats, dtype=dtype, device=device, with_diffusers=not args.no_diffusers,
                 img_tokens=args.img_tokens, txt_tokens=args.txt_tokens)  # fmt: skip
    print(show(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "result": r.__dict__ | {"ratios": r.ratios()}}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
