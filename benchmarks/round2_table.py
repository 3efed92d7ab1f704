"""``python -m benchmarks.round2_table sd15.json sdxl.json``: issue 17's table from two ``python -m benchmarks --json``
results (GPU), ours beside diffusers/PEFT and the target."""

from __future__ import annotations

import json
import sys


def _load(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)["results"][0]
    except (OSError, KeyError, IndexError, ValueError) as exc:
        print(f"missing {path}: {exc}")
        return {}


def _f(value, unit: str = " ms", fmt: str = "{:.1f}") -> str:
    return "n/a" if value is None else fmt.format(value) + unit


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sd15, sdxl = (_load(p) for p in args[:2])
    rows = []
    step, dstep = sdxl.get("step", {}), sdxl.get("diffusers", {})
    base = step.get("base")
    d_pct = 100 * (dstep["online_step"] - base) / base if base and "online_step" in dstep else None
    rows.append(("online, whole SDXL UNet step, 5 LoRAs r32", _f(step.get("online_pct"), " %", "{:+.0f}"), _f(d_pct, " %", "{:+.0f}"), "≤ +15 %"))
    for name, r in (("SD1.5", sd15), ("SDXL", sdxl)):
        rows.append((f"online, sampled layers vs base, {name}", _f(r.get("online", {}).get("online_overhead_pct"), " %", "{:+.0f}"), "", "≤ +50 %"))
    rows.append(("online strength change, SDXL", _f(sdxl.get("online", {}).get("online_switch")), _f(dstep.get("online_switch")), "≤ 5 ms"))
    cpu = sdxl.get("ours_cpu_backups", {}).get("switch")
    h2d = sdxl.get("h2d_floor_ms")
    rows.append(("fused switch, pinned CPU backups, SDXL", _f(cpu / h2d if cpu and h2d else None, "×", "{:.2f}") + " h2d floor", "", "≤ 1.3×"))
    ours = sdxl.get("ours", {})
    rows.append(("fused switch, SDXL (exactly rounded)", _f(ours.get("switch")), _f(sdxl.get("diffusers", {}).get("switch")),
                 f"≤ 12 ms (copy floor {_f(sdxl.get('floor_ms'))})"))
    rows.append(("fused switch, SDXL, mixed stack (LoRA, LoCon, LoHa, DoRA)", _f(sdxl.get("realistic", {}).get("switch")), "", "≤ 60 ms"))
    rows.append(("SD1.5 switch / clear", f"{_f(sd15.get('ours', {}).get('switch'))} / {_f(sd15.get('ours', {}).get('clear'))}",
                 f"{_f(sd15.get('diffusers', {}).get('switch'))} / {_f(sd15.get('diffusers', {}).get('clear'))}", ""))
    width = max(len(r[0]) for r in rows)
    print(f"{'figure (median, fp16)':{width}s} | {'ours':>22s} | {'diffusers/PEFT':>16s} | target")
    for r in rows:
        print(f"{r[0]:{width}s} | {r[1]:>22s} | {r[2]:>16s} | {r[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
