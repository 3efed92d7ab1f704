"""``python -m benchmarks.doctor``: how long the stack doctor takes on five rank-32 LoRAs on the SDXL UNet's
attention, feed-forward and projection layers (the same LoRAs as the patching benchmark; benchmarks/README.md)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from lib_lorastack.doctor import diagnose, stack_item
from lib_lorastack.formats.loader import parse_state_dict
from lib_lorastack.formats.targets import Family

from .__main__ import machine
from .models import make_loras

STRENGTHS = (0.9, 0.8, 0.7, 0.6, 0.5)


@dataclass
class DoctorResult:
    family: str
    loras: int
    rank: int
    layers: int
    device: str
    threads: int
    runs_ms: list[float] = field(default_factory=list)  # diagnose(): metrics, findings, suggestions
    png_ms: float = 0.0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.runs_ms)


def run_doctor(
    family: Family = Family.SDXL,
    *,
    count: int = 5,
    rank: int = 32,
    repeats: int = 5,
    device: str = "cpu",
    limit: int | None = None,
) -> DoctorResult:
    loras = [
        parse_state_dict(sd, family=family, name=f"lora{i}")
        for i, sd in enumerate(make_loras(family, count=count, rank=rank, limit=limit))
    ]
    items = [stack_item(lo, STRENGTHS[i % len(STRENGTHS)]) for i, lo in enumerate(loras)]
    result = DoctorResult(family.value, count, rank, 0, device, torch.get_num_threads())
    diagnose(items, family, device=device)  # warm-up (first-call allocations, CUDA context)
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        report = diagnose(items, family, device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        result.runs_ms.append((time.perf_counter() - start) * 1000)
    result.layers = len(report.metrics.targets)
    start = time.perf_counter()
    report.png()
    result.png_ms = (time.perf_counter() - start) * 1000
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.doctor", description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=["sd15", "sdxl"], default="sdxl")
    p.add_argument("--loras", type=int, default=5)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    family = {"sd15": Family.SD1, "sdxl": Family.SDXL}[args.family]
    print(f"machine: {machine()}")
    r = run_doctor(family, count=args.loras, rank=args.rank, repeats=args.repeats, device=args.device)
    runs = ", ".join(f"{v:.0f}" for v in r.runs_ms)
    print(
        f"doctor, {r.family.upper()}: {r.loras} LoRAs × rank {r.rank} on {r.layers} layers, {r.device}, "
        f"{r.threads} threads: median {r.median_ms:.0f} ms (runs: {runs} ms); heatmap PNG {r.png_ms:.0f} ms"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), **asdict(r), "median_ms": r.median_ms}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
