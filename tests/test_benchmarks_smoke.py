"""The benchmark machinery runs end to end on a few layers, and its ratios are the right divisions (no timings)."""

from __future__ import annotations

import torch

from benchmarks.__main__ import show
from benchmarks.run import FamilyResult, run_family
from lib_lorastack.formats.targets import Family


def test_benchmark_runs_on_a_few_layers() -> None:
    r = run_family(Family.SD1, repeats=1, dtype=torch.float32, with_diffusers=False, device="cpu", limit=6)
    assert r.touched_params == 6
    assert r.incremental_writes == r.incremental_expected == 6
    assert r.memory["backup_mib"] == r.memory["touched_mib"] > 0
    assert all(v > 0 for v in r.ours.values())
    assert "ours_switch / copy_floor" in r.ratios()
    assert "SD1 UNet" in show(r)


def test_ratio_math() -> None:
    r = FamilyResult("sd1", "float16", floor_ms=10, compute_floor_ms=30, ours={"switch": 20, "apply": 40},
                     diffusers={"switch": 400, "apply": 100})  # fmt: skip
    assert r.ratios() == {
        "ours_switch / copy_floor": 2.0,
        "ours_switch / (copy + matmul floor)": 0.5,
        "diffusers_switch / ours_switch": 20.0,
        "diffusers_apply / ours_apply": 2.5,
    }


def test_doctor_benchmark_runs_on_a_few_layers() -> None:
    from benchmarks.doctor import run_doctor

    r = run_doctor(Family.SD1, count=3, rank=4, repeats=2, limit=5)
    assert r.layers == 5 and len(r.runs_ms) == 2 and r.median_ms > 0 and r.png_ms > 0
