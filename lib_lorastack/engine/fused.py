"""The fused math: one function computes a weight's new value from its pristine value and its contributions.

new = round(W0 + Σ_additive s·ΔW  then, in stack order, W ← W + m·(W'(W) − W) for multiplicative adapters),
computed in fp32 (or ``compute_dtype``) on the weight's device and rounded once into the weight's dtype.

Every path that needs a fused value (apply, incremental change, rollback, a CUDA graph of a switch) calls
``write_fused`` with the weight's ``WeightProgram`` and the same operand layout, so a weight's bits depend only on
its pristine value, its contributions and their strengths, never on how weights were grouped or in which order they
were written. (A batched product of several weights is not the same GEMM as one product per weight on a GPU.)

The plain low-rank contributions of a weight are one product: their factors are concatenated once per composition
(``up_t`` [R, out] with each file's alpha/rank folded in, ``down`` [R, fan_in]) and the strengths enter as a per-rank
scale vector, so a strength change rebuilds nothing. Two ways to compute it, chosen by ``choose_path`` from the
composition, the strengths and the weight alone:

* ``"split"`` (GPU, factors stored in fp16 or bf16): the scaled up factor is split into half-precision parts whose
  sum is exact to fp32 accuracy (fp16: hi + lo; bf16: hi + mid + lo) and the down factor is repeated per part, so
  every partial product on the matrix units is exact and only the fp32 accumulation rounds (fp32 result). The
  scaling and splitting runs for many weights at once (``prepare_split``); each weight's operand is a view with the
  same layout whatever the group, so its bits do not depend on the group.
* ``"fp32"`` (everything else, the CPU): an fp32 product.

Then ``W = W0 + product`` in fp32, rounded once into the weight (one pass), or the dense and multiplicative changes
on top first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..adapters.base import Adapter
from .device_cache import FactorCache, Factors
from .packed import logical_shape
from .plan import Contribution, ParamKey, ParamPlan

MAX_HALF_STRENGTH = 16.0  # |strength| above this takes the fp32 path (the fp16 parts would overflow)
SPLIT_PARTS = {torch.float16: 2, torch.bfloat16: 3}
_DIRECT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MM_OUT_DTYPE: dict[str, bool] = {}

SPLIT, FP32 = "split", "fp32"


@dataclass
class WeightProgram:
    """What one weight is made of, strengths aside, with its factors ready on the device."""

    key: ParamKey
    composition: tuple
    shape: torch.Size
    device: torch.device
    low_rank: list[int]  # positions (in the plan's canonical order) of the contributions in ``up_t``/``down``
    ranks: list[int]
    rest: list[int]  # positions of the contributions computed by their adapter (dense, row blocks, biases, multiplicative)
    factors: list[Factors] = field(default_factory=list)
    rest_adapters: list[Adapter] = field(default_factory=list)  # the ``rest`` contributions' adapters on the device
    compute_dtype: torch.dtype = torch.float32
    _up_t: torch.Tensor | None = None  # [R, out] compute dtype, file scales folded in (see ``up_t``)
    half_dtype: torch.dtype | None = None  # fp16/bf16 when every factor is stored in it (exact half products)
    exponent: int = 0  # split paths: the scale vector carries 2**exponent, undone exactly by the product's alpha
    _down: torch.Tensor | None = None
    _down_parts: torch.Tensor | None = None
    _down_native: torch.Tensor | None = None

    @property
    def up_t(self) -> torch.Tensor | None:
        """[R, out] in the compute dtype with each file's scale folded in; None when no contribution is low-rank.
        Built from the factors on first use (again after ``release``: the same operations, the same bits)."""
        if self._up_t is None and self.factors:
            self._up_t = torch.cat([(f.up.to(self.compute_dtype) * f.scale).t() for f in self.factors], 0).contiguous()
        return self._up_t

    @up_t.setter
    def up_t(self, value: torch.Tensor | None) -> None:
        self._up_t = value

    def release(self) -> None:
        """Free the concatenated factors (they are rebuilt when next used); the factors themselves stay."""
        self._up_t = self._down = self._down_parts = self._down_native = None

    @property
    def rank(self) -> int:
        return sum(self.ranks)

    @property
    def out_features(self) -> int:
        return int(self.shape[0])

    def down(self) -> torch.Tensor:
        """[R, fan_in] in the compute dtype."""
        if self._down is None:
            self._down = torch.cat([f.down for f in self.factors], 0).to(self.compute_dtype)
        return self._down

    def down_as(self, dtype: torch.dtype) -> torch.Tensor:
        """[R, fan_in] in ``dtype`` (online layers keep their down factor in the layer's dtype)."""
        cached = self._down_native
        if cached is None or cached.dtype != dtype:
            cached = self._down_native = torch.cat([f.down for f in self.factors], 0).to(dtype).contiguous()
        return cached

    def down_parts(self, parts: int) -> torch.Tensor:
        """Each row of down repeated ``parts`` times, in the factors' half dtype: [parts·R, fan_in]."""
        if self._down_parts is None or self._down_parts.shape[0] != parts * self.rank:
            self._down_parts = torch.cat([f.down for f in self.factors], 0).repeat_interleave(parts, dim=0)
        return self._down_parts

    def scale_values(self, strengths: tuple[float, ...], path: str) -> list[float]:
        """The per-contribution values of the scale vector (each repeated over its contribution's ranks)."""
        factor = math.ldexp(1.0, self.exponent) if path != FP32 else 1.0
        return [strengths[i] * factor for i in self.low_rank]

    def rest_values(self, strengths: tuple[float, ...]) -> list[float]:
        """The strengths of the ``rest`` contributions, one value each (``write_fused`` reads them from a device
        tensor, so a CUDA graph of the write replays with new ones)."""
        return [strengths[i] for i in self.rest]

    @property
    def graph_safe(self) -> bool:
        """Every part of the write is tensor work on the device (see ``Adapter.graph_safe``)."""
        return all(getattr(a, "graph_safe", False) for a in self.rest_adapters)

    def nbytes(self) -> int:
        tensors = (self._up_t, self._down, self._down_parts, self._down_native)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def tensors(self) -> list[torch.Tensor]:
        """Every device tensor a write reads (a CUDA graph keeps them alive)."""
        own = [t for t in (self.up_t, self._down, self._down_parts) if t is not None]
        return own + [t for a in self.rest_adapters for t in _adapter_tensors(a)]


def _adapter_tensors(adapter: Adapter) -> list[torch.Tensor]:
    out = [t for t in adapter.tensors.values() if isinstance(t, torch.Tensor)]
    inner = getattr(adapter, "inner", None)
    magnitude = getattr(adapter, "magnitude", None)
    if isinstance(inner, Adapter):
        out += _adapter_tensors(inner)
    if isinstance(magnitude, torch.Tensor):
        out.append(magnitude)
    return out


def build_program(plan: ParamPlan, param: torch.Tensor, cache: FactorCache, compute_dtype: torch.dtype) -> WeightProgram:
    additive, multiplicative = plan.canonical()
    low_rank: list[int] = []
    rest: list[int] = []
    factors: list[Factors] = []
    for i, c in enumerate(additive):
        f = cache.factors(c.bound, param.device)
        if f is None:
            rest.append(i)
        else:
            low_rank.append(i)
            factors.append(f)
    rest += [len(additive) + j for j in range(len(multiplicative))]
    program = WeightProgram(
        plan.key, plan.composition, logical_shape(param), param.device, low_rank, [int(f.up.shape[1]) for f in factors], rest, factors,
        compute_dtype=compute_dtype,
    )
    contributions = [*additive, *multiplicative]
    program.rest_adapters = [cache.adapter(contributions[i].bound, param.device) for i in rest]
    if factors:
        dtypes = {f.up.dtype for f in factors} | {f.down.dtype for f in factors}
        program.half_dtype = next(iter(dtypes)) if len(dtypes) == 1 and next(iter(dtypes)) in SPLIT_PARTS else None
        amax = max(f.up_amax for f in factors)
        if program.half_dtype is torch.float16 and amax > 0:
            # largest |hi| = amax·|s|·2**e ≤ 2**10 · 16: far inside fp16's range, and the lo part stays normal
            program.exponent = max(-30, min(30, math.floor(math.log2(1024.0 / amax))))
    return program


def tensor_cores_available(device: torch.device, dtype: torch.dtype = torch.float16) -> bool:
    """Half-precision products with an fp32 result (``torch.mm(..., out_dtype=torch.float32)``) on this device."""
    if device.type != "cuda":
        return False
    name = f"{device}/{dtype}"
    if name not in _MM_OUT_DTYPE:
        try:
            a = torch.ones(16, 16, dtype=dtype, device=device)
            ok = torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32  # type: ignore[call-arg]
        except (TypeError, RuntimeError, NotImplementedError):
            ok = False
        _MM_OUT_DTYPE[name] = ok
    return _MM_OUT_DTYPE[name]


def choose_path(program: WeightProgram, strengths: tuple[float, ...], param: torch.Tensor, half_products: bool) -> str:
    """A pure function of the composition, the strengths and the weight, so every path makes the same choice."""
    if program.up_t is None or program.up_t.dtype != torch.float32 or param.device.type != "cuda" or not half_products:
        return FP32
    if program.half_dtype is None or not tensor_cores_available(param.device, program.half_dtype):
        return FP32
    if program.half_dtype is torch.float16 and any(abs(strengths[i]) > MAX_HALF_STRENGTH for i in program.low_rank):
        return FP32
    return SPLIT


def split_rows(scaled_t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 [R, out] → ``dtype`` [R, parts, out]: parts whose sum equals each row to fp32 accuracy (each part is the
    exact residual of the ones before it, rounded once)."""
    parts = SPLIT_PARTS[dtype]
    out = torch.empty(scaled_t.shape[0], parts, scaled_t.shape[1], dtype=dtype, device=scaled_t.device)
    residual = scaled_t
    for p in range(parts):
        out[:, p].copy_(residual)
        if p + 1 < parts:
            residual = residual - out[:, p]
    return out


def split_operand(split: torch.Tensor, start: int, rank: int) -> torch.Tensor:
    """One weight's left operand [out, parts·R] from rows ``start:start+rank`` of a split block: a transposed view,
    laid out the same way whatever the block holds."""
    parts, out = split.shape[1], split.shape[2]
    return split[start : start + rank].reshape(rank * parts, out).t()


def prepare_split(programs: Sequence[WeightProgram], scale: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """The split left operands of weights that share their output width and half dtype: one scaling and one split
    for all of them. ``scale``: their per-rank scale values, concatenated in the same order."""
    ups = [p.up_t for p in programs]
    block = torch.cat(ups, 0) if len(ups) > 1 else ups[0]  # type: ignore[arg-type]
    split = split_rows(block * scale.view(-1, 1), dtype)
    operands = []
    start = 0
    for p in programs:
        operands.append(split_operand(split, start, p.rank))
        start += p.rank
    return operands


def half_product(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Half-precision operands, fp32 result, fp32 accumulation (the matrix units)."""
    return torch.mm(left, right, out_dtype=torch.float32)  # type: ignore[call-arg]


def write_fused(
    param: torch.Tensor,
    w0: torch.Tensor,
    program: WeightProgram,
    plan: ParamPlan,
    operand: torch.Tensor | None,
    *,
    path: str,
    compute_dtype: torch.dtype = torch.float32,
    rest_scale: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Write ``param``'s fused value, computed from its pristine value ``w0``; return the bias change (compute
    dtype) or None. ``operand``: for ``"split"`` the weight's split left operand (``prepare_split``), otherwise its
    per-rank scale vector (on the device). ``rest_scale``: the strengths of ``program.rest`` (``rest_values``), on
    the device."""
    shape = param.shape
    if program.up_t is not None:
        assert operand is not None
        if path == SPLIT:
            down = program.down_parts(operand.shape[1] // program.rank)
            product = half_product(operand, down)
            alpha = math.ldexp(1.0, -program.exponent)
        else:
            product = torch.mm((program.up_t * operand.view(-1, 1)).t(), program.down())
            alpha = 1.0
        product = product.view(shape)
        if not program.rest and param.dtype in _DIRECT_DTYPES and w0.dtype == param.dtype:
            torch.add(w0, product, alpha=alpha, out=param)  # one pass: fp32 sum, rounded once into the weight
            return None
        w = torch.add(w0.to(compute_dtype), product, alpha=alpha)
    else:
        w = w0.to(compute_dtype, copy=True)
    contributions = [*plan.canonical()[0], *plan.canonical()[1]]
    if rest_scale is None:
        rest_scale = torch.tensor(program.rest_values(plan.strengths), dtype=compute_dtype, device=w.device)
    bias = _apply_rest(w, [contributions[i] for i in program.rest], program.rest_adapters, rest_scale, compute_dtype)
    param.copy_(w)
    return bias


def _apply_rest(
    w: torch.Tensor, rest: list[Contribution], adapters: Sequence[Adapter], strengths: torch.Tensor, compute_dtype: torch.dtype
) -> torch.Tensor | None:
    """Dense and row-block changes, then multiplicative adapters in stack order, on the fp32 value ``w``; the
    strengths come from the device tensor ``strengths`` (one value per contribution)."""
    bias: torch.Tensor | None = None
    for j, (c, adapter) in enumerate(zip(rest, adapters)):
        rows = c.target.rows
        view = w if rows is None else w[rows[0] : rows[1]]
        change = adapter.add_to(view, strengths[j : j + 1])
        if change is not None:
            if bias is None:
                bias = torch.zeros(w.shape[0], dtype=compute_dtype, device=w.device)
            part = bias if rows is None else bias[rows[0] : rows[1]]
            part.add_(change.reshape(part.shape))
    return bias


def dense_delta(w0: torch.Tensor, contributions: list[Contribution], compute_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ΔW (and Δbias) of ``contributions`` on ``w0``, computed in the compute dtype (online mode's dense part)."""
    w = w0.to(compute_dtype, copy=True)
    strengths = torch.tensor([c.strength for c in contributions], dtype=compute_dtype, device=w.device)
    bias = _apply_rest(w, contributions, [c.adapter for c in contributions], strengths, compute_dtype)
    return w - w0.to(compute_dtype), bias
