"""The benchmark machinery runs end to end on a few layers, and its ratios are the right divisions (no timings)."""

from __future__ import annotations

import pytest
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


def test_flux_benchmark_runs_on_a_few_layers() -> None:
    from benchmarks.flux import FluxResult, run_flux, show

    r = run_flux(1, 0, repeats=1, dtype=torch.float32, with_diffusers=False, only=("attn.proj",), img_tokens=8, txt_tokens=4)
    assert r.touched_params == 2 and r.memory["backup_mib"] == r.memory["touched_mib"] > 0
    assert all(v > 0 for v in r.ours.values()) and r.online["layers"] == 2 and r.online["base_ms"] > 0
    assert "Flux, 1 double" in show(r) and "online / base forward" in r.ratios()
    q = FluxResult(1, 1, "bfloat16", "cpu", 256, 32, floor_ms=10, compute_floor_ms=30, ours={"switch": 20, "apply": 40},
                   diffusers={"switch": 400, "apply": 100}, online={"base_ms": 10, "online_ms": 12, "remerge_ms": 30})  # fmt: skip
    assert q.ratios() == {
        "ours_switch / copy_floor": 2.0,
        "ours_switch / (copy + matmul floor)": 0.5,
        "diffusers_apply / ours_apply": 2.5,
        "diffusers_switch / ours_switch": 20.0,
        "online / base forward": 1.2,
        "re-merge every forward / base": 3.0,
        "re-merge every forward / online": 2.5,
    }


def test_forge_host_benchmark_loras_and_its_cost_math() -> None:
    """The real-host benchmark (benchmarks/forge_host.py) imports without a server; its LoRAs cover every attention,
    feed-forward and projection layer of the SD1.5 UNet and CLIP-L; a job's cost is its time minus the plain job's
    of the same round, median over rounds."""
    from benchmarks import forge_host as fh

    targets = fh.bench_targets()
    unet = [t for t in targets if t.module.startswith("model.diffusion_model.")]
    assert (len(unet), len(targets) - len(unet)) == (16 * 12, 12 * 6)
    g = torch.Generator().manual_seed(0)
    std = fh.factor_std(32, 16.0)
    delta = (16.0 / 32) * (torch.randn(640, 32, generator=g) * std) @ (torch.randn(32, 640, generator=g) * std)
    assert abs(float(delta.std()) / fh.DELTA_STD - 1) < 0.1
    assert fh.prompt(fh.SWITCH) == "a cat <lora:bench_a_r16:1> <lora:bench_b_r32:0.5> <lora:bench_d_r32:0.6>"

    def job(engine, label, rnd, wall, ours_ms=None):
        return {"engine": engine, "label": label, "round": rnd, "wall_s": wall, "cpu_s": wall / 2, "ours_ms": ours_ms,
                "moving_s": 0.0, "load1": 4.0}  # fmt: skip

    jobs = [job("ours", "plain", 0, 3.0), job("ours", "strength", 0, 3.5, 400.0), job("builtin", "plain", 0, 3.2),
            job("builtin", "strength", 0, 4.7), job("ours", "plain", 1, 2.0), job("ours", "strength", 1, 2.7, 600.0),
            job("builtin", "plain", 1, 2.1), job("builtin", "strength", 1, 3.1)]  # fmt: skip
    s = fh.summarize({"host": "forge", "jobs": jobs})
    assert s["ours"]["strength"]["wall_s"] == pytest.approx(0.6) and s["builtin"]["strength"]["wall_s"] == pytest.approx(1.25)
    assert s["ours"]["strength"]["ours_ms"] == 500.0 and s["ours"]["plain"]["wall_s"] == 2.5
    assert "| strength | +0.60 s | +1.25 s | 2.1× | +0.30 s | +0.62 s | 2.1× | 500 ms |" in fh.timing_table({"host": "forge", "jobs": jobs})
