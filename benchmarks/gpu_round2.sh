#!/usr/bin/env bash
# Issue 17 ("the engine on the GPU, round two"): every figure of the issue's table and the exactness checks, in one
# run on a CUDA machine (written for an H200 with a 15-minute device budget: this script stays under ~8 minutes).
#   bash benchmarks/gpu_round2.sh            # from the repository root; PY=... to pick the interpreter
# Prints, in this order: the exactness checks (python -m benchmarks.gpu_check, 15 checks), the one-pass fused write
# candidates (python -m benchmarks.one_pass), then SD1.5 and SDXL with the diffusers/PEFT peer side by side
# (switch, CPU-backed switch vs the host→device floor, mixed LyCORIS stack, online sampled layers, whole UNet step
# online vs diffusers' unfused set_adapters, online strength change), each part under its own time limit so one
# slow part cannot eat the budget of the others.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-/tmp}
started=$(date +%s)
part() {  # part SECONDS NAME COMMAND...
  local limit=$1 name=$2; shift 2
  echo "=== $name (limit ${limit}s, at +$(( $(date +%s) - started ))s)"
  timeout "$limit" "$@"; local rc=$?
  [ $rc -eq 124 ] && echo "=== $name: TIMED OUT after ${limit}s"
  return 0
}
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
$PY -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "triton: not installed"
part 120 "exactness (gpu_check)" $PY -m benchmarks.gpu_check
part 30 "one-pass exactly rounded write: candidates" $PY -m benchmarks.one_pass --repeats 5
part 80 "SD1.5 with diffusers" $PY -m benchmarks --family sd15 --repeats 3 --json "$OUT/round2_sd15.json"
part 220 "SDXL with diffusers" $PY -m benchmarks --family sdxl --repeats 3 --json "$OUT/round2_sdxl.json"
part 10 "issue 17 table" $PY -m benchmarks.round2_table "$OUT/round2_sd15.json" "$OUT/round2_sdxl.json"
echo "=== done in $(( $(date +%s) - started )) s"
