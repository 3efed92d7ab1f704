"""``python -m benchmarks.one_pass``: candidates for the exactly rounded fused write in one pass (issue 17),
W = round(W0 + L·R) with L·R the split half-precision product (exact partial products, fp32 accumulation) and one
rounding into the weight's dtype, on the SDXL UNet's touched shapes (722 weights, five rank-32 LoRAs: K = 2·160).

For each candidate: the time of all 722 writes (CUDA events, median of the repeats), the copy floor of the same
bytes, and on a sample of weights the elements that differ from round(W0 + L·R) computed in float64:
* ``two-pass`` (today): ``mm(out_dtype=fp32)`` then ``add(W0, P, out=W)``;
* ``addmm-fp16``: ``addmm(W0, L, R, out=W)`` in fp16 (cuBLAS: fp32 compute, C and D in fp16);
* ``addmm-fp32``: ``addmm(W0.float(), L, R, out_dtype=fp32)`` then one rounding copy (the add inside the GEMM);
* ``triton``: one kernel, the accumulator starts at W0 (fp32), ``tl.dot`` of the fp16 parts, one rounding at the
  store — reads W0 and writes W once (only when Triton is installed: it ships with the CUDA wheels of torch).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from lib_lorastack.formats.targets import Family
from lib_lorastack.formats.writers import target_shape

from .models import unet_targets


def _triton_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def fused_write(w0, left, right, out, M, N, K, s_wm, s_lm, s_lk, s_rk, s_rn,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        acc = tl.load(w0 + rm[:, None] * s_wm + rn[None, :], mask=mask, other=0.0).to(tl.float32)
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            a = tl.load(left + rm[:, None] * s_lm + rk[None, :] * s_lk, mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
            b = tl.load(right + rk[:, None] * s_rk + rn[None, :] * s_rn, mask=(rk[:, None] < K) & (rn[None, :] < N), other=0.0)
            acc = tl.dot(a, b, acc)  # fp16 × fp16 products exact in fp32, fp32 accumulation
        tl.store(out + rm[:, None] * s_wm + rn[None, :], acc.to(out.dtype.element_ty), mask=mask)

    def run(w0: torch.Tensor, left: torch.Tensor, right: torch.Tensor, out: torch.Tensor) -> None:
        m, n = out.shape
        k = left.shape[1]
        grid = (triton.cdiv(m, 64), triton.cdiv(n, 64))
        fused_write[grid](w0, left, right, out, m, n, k, w0.stride(0), left.stride(0), left.stride(1),
                          right.stride(0), right.stride(1), BM=64, BN=64, BK=32)  # fmt: skip

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.one_pass")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rank", type=int, default=160)
    p.add_argument("--sample", type=int, default=40)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("SKIP  one-pass fused write candidates: no CUDA device")
        return 0
    from lib_lorastack.engine.fused import split_rows

    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    g = torch.Generator(device=dev).manual_seed(0)
    work = []
    for t in unet_targets(Family.SDXL):
        shape = target_shape(t, Family.SDXL)
        out_f, fan_in = shape[0], int(torch.tensor(shape[1:]).prod())
        w0 = (torch.randn(out_f, fan_in, device=dev, generator=g) * 0.02).half()
        up = torch.randn(args.rank, out_f, device=dev, generator=g) * 0.01  # fp32 [R, out], strengths folded in
        down = (torch.randn(args.rank, fan_in, device=dev, generator=g) * 0.02).half()
        left = split_rows(up, torch.float16).reshape(args.rank * 2, out_f).t()  # [out, 2R] view, as the engine's
        right = down.repeat_interleave(2, dim=0)  # [2R, in]
        work.append((w0, left, right, torch.empty_like(w0)))
    nbytes = sum(w0.numel() * 2 for w0, *_ in work)
    print(f"{len(work)} weights, {nbytes / 2**20:.0f} MiB fp16, K = {2 * args.rank}")

    def two_pass(w0, left, right, out):
        torch.add(w0, torch.mm(left, right, out_dtype=torch.float32), out=out)

    def addmm_fp16(w0, left, right, out):
        torch.addmm(w0, left, right, out=out)

    def addmm_fp32(w0, left, right, out):
        out.copy_(torch.addmm(w0.float(), left, right, out_dtype=torch.float32))

    candidates = {"two-pass (today)": two_pass, "addmm-fp16": addmm_fp16, "addmm-fp32": addmm_fp32}
    try:
        candidates["triton one pass"] = _triton_kernel()
    except Exception as exc:
        print(f"SKIP  triton: {type(exc).__name__}: {exc}"[:300])

    def timed(fn) -> float:
        samples = []
        for _ in range(args.repeats + 1):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(stop))
        return statistics.median(samples[1:])

    copy = timed(lambda: [out.copy_(w0) for w0, _, _, out in work])
    print(f"copy floor (W0 → W, same bytes): {copy:.2f} ms")
    sample = work[:: max(1, len(work) // args.sample)]
    exact = [(w0.double() + left.double() @ right.double()).half() for w0, left, right, _ in sample]
    for name, fn in candidates.items():
        try:
            ms = timed(lambda fn=fn: [fn(*item) for item in work])
            off = total = 0
            for (w0, left, right, out), want in zip(sample, exact):
                fn(w0, left, right, out)
                off += int((out != want).sum())
                total += out.numel()
            print(f"{name:18s} {ms:8.2f} ms ({ms / copy:.2f}× copy floor); off the exactly rounded value: "
                  f"{off} of {total} ({100 * off / total:.4f} %)")
        except Exception as exc:
            print(f"FAIL  {name}: {type(exc).__name__}: {exc}"[:300])
    return 0


if __name__ == "__main__":
    sys.exit(main())
