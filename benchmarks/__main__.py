"""``python -m benchmarks`` (or ``bash run.sh bench``): see benchmarks/README.md."""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

from lib_lorastack.formats.targets import Family

from .run import FamilyResult, bench_lycoris, run_family


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {torch.get_num_threads()} threads{gpu}, torch {torch.__version__}"


def show(r: FamilyResult) -> str:
    lines = [f"== {r.family.upper()} UNet ({r.dtype}, {r.device}): {r.touched_params} touched weights, {r.touched_mib:.0f} MiB"]
    lines.append(f"   copy floor (plain copy of the touched bytes):   {r.floor_ms:9.1f} ms")
    lines.append(f"   matmul floor (the products alone, fp32):       {r.compute_floor_ms:9.1f} ms")
    if r.h2d_floor_ms:
        lines.append(f"   host→device floor (touched bytes from pinned): {r.h2d_floor_ms:9.1f} ms")
    for step in ("apply", "switch", "incremental", "clear"):
        d = r.diffusers.get(step)
        cpu = r.ours_cpu_backups.get(step)
        lines.append(f"   {step:12s} ours {r.ours.get(step, float('nan')):9.1f} ms" + (f"   diffusers {d:9.1f} ms" if d else "")
                     + (f"   ours, CPU backups {cpu:9.1f} ms" if cpu else ""))
    if "switch_host" in r.ours:
        lines.append(f"   switch, host-side work: {r.ours['switch_host']:.1f} ms; first switch after an apply: {r.ours['first_switch']:.1f} ms"
                     + (f" (CPU backups {r.ours_cpu_backups['first_switch']:.1f} ms)" if r.ours_cpu_backups else ""))
    lines.append(f"   incremental: {r.incremental_writes} weights written (the changed LoRA has {r.incremental_expected})")
    for k, v in r.ratios().items():
        lines.append(f"   {k:38s} {v:7.2f}×")
    if r.realistic:
        x = r.realistic
        lines.append(f"   mixed stack (attention LoRA r16, LoCon, LoHa, DoRA; {x['weights']:.0f} weights): "
                     f"apply {x['apply']:.1f} ms, switch {x['switch']:.1f} ms, clear {x['clear']:.1f} ms")
    o = r.online
    lines.append(f"   forward of {o['layers_sampled']} layers: base {o['base_forward']:.1f} ms, fused {o['fused_forward']:.1f} ms "
                 f"({o['fused_overhead_pct']:+.1f} %), online {o['online_forward']:.1f} ms ({o['online_overhead_pct']:+.1f} %)")
    lines.append(f"   online: apply {o['online_apply']:.1f} ms, strength change {o['online_switch']:.1f} ms (no weight written)")
    if r.step:
        s = r.step
        lines.append(f"   whole diffusers UNet step ({s['layers']:.0f} layers attached): base {s['base']:.1f} ms, "
                     f"online {s['online']:.1f} ms ({s['online_pct']:+.1f} %), fused {s['fused']:.1f} ms ({s['fused_pct']:+.1f} %)")
    if "online_step" in r.diffusers:
        d = r.diffusers
        pct = f" ({100 * (d['online_step'] - r.step['base']) / r.step['base']:+.1f} %)" if r.step else ""
        lines.append(f"   diffusers online (PEFT unfused): step {d['online_step']:.1f} ms{pct}, set_adapters {d['online_switch']:.1f} ms")
    m = r.memory
    mem = f"   memory: backups {m['backup_mib']:.0f} MiB = touched {m['touched_mib']:.0f} MiB; peak RSS {m['peak_rss_mib']:.0f} MiB"
    if "peak_gpu_mib" in m:
        mem += f"; peak GPU {m['peak_gpu_mib']:.0f} MiB"
    lines.append(mem)
    lines += [f"   note: {n}" for n in r.notes]
    return "\n".join(lines)


def show_lycoris(family: Family, r: dict) -> str:
    lines = [f"== {family.value.upper()} UNet, lycoris-lora files (fp32): {r['weights']} weights, {r['touched_gib']:.2f} GiB; "
             f"copy floor {r['copy_floor']:.0f} ms"]
    base = r.get("locon", {}).get("apply")
    for algo in ("locon", "lokr", "loha"):
        if algo in r:
            x = r[algo]
            rel = f" ({x['apply'] / base:.2f}× LoCon's)" if base else ""
            lines.append(f"   {algo:6s} apply {x['apply']:8.0f} ms{rel} = {x['apply'] / r['copy_floor']:.1f}× copy floor; "
                         f"strength change {x['switch']:8.0f} ms; clear {x['clear']:6.0f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks")
    p.add_argument("--family", choices=["sd15", "sdxl", "both"], default="both")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="one repeat, SD1.5 only, no diffusers peer")
    p.add_argument("--no-diffusers", action="store_true")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--no-realistic", action="store_true", help="skip the mixed stack (LoRA, LoCon, LoHa, DoRA)")
    p.add_argument("--step", action="store_true", help="also time a whole diffusers UNet step on the CPU (slow)")
    p.add_argument("--lycoris", action="store_true", help="only the LyCORIS apply figures (lycoris-lora files, fp32)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    families = {"sd15": [Family.SD1], "sdxl": [Family.SDXL], "both": [Family.SD1, Family.SDXL]}[args.family]
    if args.quick:
        families, args.repeats, args.no_diffusers = [Family.SD1], 1, True
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"machine: {machine()}")
    if args.lycoris:
        for family in families:
            print(show_lycoris(family, bench_lycoris(family, args.repeats)), flush=True)
        return 0
    results = []
    for family in families:
        r = run_family(family, repeats=args.repeats, dtype=dtype, with_diffusers=not args.no_diffusers, device=device,
                       realistic=not args.no_realistic, step=True if args.step else None)
        print(show(r), flush=True)
        results.append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "results": [r.__dict__ | {"ratios": r.ratios()} for r in results]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
