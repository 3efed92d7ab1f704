"""The doctor's numbers: per layer and per block, each LoRA's change, how the changes combine, and how much they
overlap, computed from the low-rank factors without forming ΔW (docs/doctor.md has the formulas).

For every target (a parameter, or a q/k/v row block) with parts ``ΔW_a = U_a·D_a`` (strength and scale in ``U_a``):

* Gram matrix ``G_ab = ⟨ΔW_a, ΔW_b⟩_F = Σ (U_aᵀU_b) ⊙ (D_a D_bᵀ)``: two products over the concatenated ranks.
  ``‖ΣΔW‖² = 1ᵀG1``; cosine ``G_ab/√(G_aa G_bb)``.
* Overlap of the output (column) spaces ``col(U_a)`` and of the input (row) spaces ``row(D_a)``: with orthonormal
  bases ``Q_a``, the principal angles θ between two spaces have ``cos θ`` = singular values of ``Q_aᵀQ_b``, and
  overlap = ``Σ cos²θ / min(k_a, k_b) = ‖Q_aᵀQ_b‖²_F / min(k_a, k_b)`` ∈ [0, 1] (k = dimension). The bases come
  from the same Gram matrices: ``U_aᵀU_a = L_aL_aᵀ`` (Cholesky), ``Q_a = U_a·L_a⁻ᵀ``, so
  ``Q_aᵀQ_b = L_a⁻¹ (U_aᵀU_b) L_b⁻ᵀ``, the same as QR of the factors. Two random spaces overlap about
  ``max(k_a, k_b)/dim`` ("chance").

Adapters that are not a plain low-rank product (LoHa, LoKr, full, norm, Tucker LoCon; and DoRA/OFT/IA3/GLoRA at the
base weight) use their full ΔW from ``adapter.update``: exact Gram from the dense matrices; their space is the
dominant one (the leading singular directions holding ``ENERGY_KEPT`` of the energy, at most ``SKETCH_RANK``, from a
seeded randomized range finder with one power iteration: exact when the rank is lower).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..formats.targets import Family, Target
from ..syntax.blocks import FULL_LAYOUT
from .basefile import BaseCheckpoint, CheckpointError
from .changes import OTHER, TargetChange, collect_changes
from .progress import ProgressFn, no_progress
from .stack import StackItem

ENERGY_KEPT = 0.99  # a change's dominant directions hold this share of its energy
SKETCH_RANK = 32  # directions sampled from a dense (non-low-rank) change
BATCH = 48  # targets of equal shape and ranks measured in one batched product


@dataclass
class TargetMetrics:
    """One target. Matrices are ``[N, N]`` over the whole stack (N LoRAs), float64; rows of LoRAs that do not
    change the target are 0 (gram) or NaN (overlaps)."""

    target: Target
    block: str
    present: tuple[int, ...]
    gram: torch.Tensor
    out_overlap: torch.Tensor
    in_overlap: torch.Tensor
    out_chance: torch.Tensor
    in_chance: torch.Tensor
    kept: torch.Tensor  # [N] dominant directions per LoRA (0 when absent)
    base_sq: float | None = None

    @property
    def combined(self) -> float:
        return math.sqrt(max(float(self.gram.sum()), 0.0))

    @property
    def relative(self) -> float | None:
        return None if not self.base_sq else self.combined / math.sqrt(self.base_sq)


@dataclass
class BlockMetrics:
    """A block (or any group of targets): Gram matrices summed; overlaps averaged with weights √(G_aa·G_bb)."""

    block: str
    targets: int
    gram: torch.Tensor
    out_overlap: torch.Tensor
    in_overlap: torch.Tensor
    out_chance: torch.Tensor
    in_chance: torch.Tensor
    base_sq: float | None = None

    def norms(self) -> list[float]:
        """‖s_a·ΔW_a‖ of each LoRA over the block."""
        return [math.sqrt(max(float(v), 0.0)) for v in self.gram.diagonal()]

    @property
    def combined(self) -> float:
        """‖Σ s_a·ΔW_a‖ over the block."""
        return math.sqrt(max(float(self.gram.sum()), 0.0))

    @property
    def independent(self) -> float:
        """What the combined change would be if the changes were orthogonal: √Σ‖s_a·ΔW_a‖²."""
        return math.sqrt(max(float(self.gram.diagonal().sum()), 0.0))

    @property
    def excess(self) -> float | None:
        """combined / independent: 1 for orthogonal changes, > 1 when they reinforce, < 1 when they cancel."""
        ind = self.independent
        return None if ind == 0 else self.combined / ind

    @property
    def alignment(self) -> float | None:
        """combined / Σ‖s_a·ΔW_a‖ (≤ 1; 1 when every change points the same way)."""
        total = sum(self.norms())
        return None if total == 0 else self.combined / total

    @property
    def relative(self) -> float | None:
        """‖ΣΔW‖ / ‖W0‖ over the block (needs the base checkpoint)."""
        return None if not self.base_sq else self.combined / math.sqrt(self.base_sq)

    def cosine(self) -> torch.Tensor:
        d = self.gram.diagonal().clamp_min(0).sqrt()
        denom = d[:, None] * d[None, :]
        out = torch.where(denom > 0, self.gram / denom.clamp_min(1e-300), torch.full_like(self.gram, float("nan")))
        return out.clamp(-1, 1)

    def shares(self) -> list[float]:
        """Each LoRA's share of the block's energy Σ‖s_a·ΔW_a‖²."""
        diag = [max(float(v), 0.0) for v in self.gram.diagonal()]
        total = sum(diag)
        return [v / total if total else 0.0 for v in diag]


@dataclass
class StackMetrics:
    family: Family
    names: list[str]
    targets: list[TargetMetrics]
    blocks: dict[str, BlockMetrics]  # in the family's LBW layout order, then OTHER
    unet: BlockMetrics | None
    te: BlockMetrics | None
    skipped: list[str] = field(default_factory=list)  # parts left out, and why
    seconds: float = 0.0
    has_base: bool = False


# ----------------------------------------------------------------------------------------------- factor algebra
def kept_mask(s: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Which singular values (descending, ``[..., k]``) are needed to reach ``ENERGY_KEPT`` of ``total`` energy."""
    e = s * s
    before = torch.cumsum(e, -1) - e
    return (before < ENERGY_KEPT * total.unsqueeze(-1)) & (e > 0)


def _indicator(sizes: Sequence[int], dtype, device) -> torch.Tensor:
    e = torch.zeros(len(sizes), sum(sizes), dtype=dtype, device=device)
    start = 0
    for i, size in enumerate(sizes):
        e[i, start : start + size] = 1
        start += size
    return e


@contextmanager
def _small_linalg(device: torch.device):
    """Work on many tiny matrices (r × r): on the CPU, one thread. Threaded BLAS/LAPACK on such sizes only
    synchronises, and on a busy machine each synchronisation can wait a whole scheduler slice (a 72×72 product
    took 20 ms with 2 threads, 0.02 ms with 1); the large products before it stay parallel."""
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _whitener(g: torch.Tensor, sizes: Sequence[int], jitter: float) -> torch.Tensor:
    """Block-diagonal ``T`` with ``T_a = L_a⁻ᵀ`` for each diagonal block ``g_aa = L_a L_aᵀ`` of a factor Gram
    (batched, float64), so that ``Tᵀ g T`` holds every ``Q_aᵀQ_b``. ``jitter``·mean(diag) is added before the
    Cholesky: a direction the factor lacks then gets a (near) zero column in ``Q`` instead of failing."""
    out = torch.zeros_like(g)
    start = 0
    for size in sizes:
        sl = slice(start, start + size)
        start += size
        block = g[..., sl, sl]
        eye = torch.eye(size, dtype=g.dtype, device=g.device)
        scale = block.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)[..., None, None]
        chol, _ = torch.linalg.cholesky_ex(block + jitter * scale * eye)
        inv = torch.linalg.solve_triangular(chol, eye.expand_as(block), upper=False)
        out[..., sl, sl] = inv.transpose(-1, -2)
    return out


def _congruence(t: torch.Tensor, g: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """``tᵀ·g·t`` for a block-diagonal ``t``; with equal ranks as block products (n²·r³ instead of (n·r)³)."""
    n, r = len(sizes), sizes[0]
    if any(size != r for size in sizes):
        return t.transpose(-1, -2) @ g @ t
    batch = g.shape[:-2]
    blocks = torch.stack([t[..., i * r : (i + 1) * r, i * r : (i + 1) * r] for i in range(n)], -3)  # [.., n, r, r]
    g5 = g.reshape(*batch, n, r, n, r)
    left = torch.einsum("...api,...apcq->...aicq", blocks, g5)
    return torch.einsum("...aicq,...cqj->...aicj", left, blocks).reshape(g.shape)


def _overlaps(g: torch.Tensor, sizes: Sequence[int], jitter: float, dim: int) -> tuple[torch.Tensor, ...]:
    """Subspace overlaps ``[B, n, n]``, chance levels ``[B, n, n]`` and dimensions ``[B, n]`` of the factor spaces
    whose Gram (over the concatenated ranks) is ``g``."""
    m = _congruence(_whitener(g, sizes, jitter), g, sizes)  # every Q_aᵀQ_b
    e = _indicator(sizes, m.dtype, m.device)
    k = m.diagonal(dim1=-2, dim2=-1) @ e.T  # tr(Q_aᵀQ_a): the space's dimension
    num = e @ (m * m) @ e.T
    kmin = torch.minimum(k.unsqueeze(-1), k.unsqueeze(-2))
    kmax = torch.maximum(k.unsqueeze(-1), k.unsqueeze(-2))
    nan = torch.full_like(kmin, float("nan"))
    ok = kmin > 0.5
    return (
        torch.where(ok, (num / kmin.clamp_min(0.5)).clamp(0, 1), nan),
        torch.where(ok, kmax / dim, nan),
        k,
    )


def lowrank_metrics(u: torch.Tensor, d: torch.Tensor, sizes: Sequence[int]) -> dict[str, torch.Tensor]:
    """Every metric of a batch of targets from their factors, the LoRAs' ranks concatenated: ``u`` ``[B, out, R]``
    (strength and scale folded in), ``d`` ``[B, R, in]``, ``sizes`` the rank of each LoRA. Two large products
    (``UᵀU`` and ``DDᵀ``); the rest on ``r × r`` blocks in float64."""
    guu = (u.transpose(-1, -2) @ u).double()
    gdd = (d @ d.transpose(-1, -2)).double()
    e = _indicator(sizes, torch.float64, guu.device)
    jitter = 100 * torch.finfo(u.dtype).eps
    out_ov, out_chance, k_out = _overlaps(guu, sizes, jitter, u.shape[-2])
    in_ov, in_chance, _ = _overlaps(gdd, sizes, jitter, d.shape[-1])
    return {
        "gram": e @ (guu * gdd) @ e.T,
        "out_overlap": out_ov,
        "in_overlap": in_ov,
        "out_chance": out_chance,
        "in_chance": in_chance,
        "kept": k_out,
    }


def dominant_factors(x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense change ``x`` [out, in] → factors ``(P, σ·Vᵀ)`` of its dominant directions (``ENERGY_KEPT`` of the
    energy, at most ``SKETCH_RANK``), from a seeded randomized range finder with one power iteration."""
    k = max(1, min(SKETCH_RANK, x.shape[0], x.shape[1]))
    g = torch.Generator().manual_seed(seed)
    omega = torch.randn(x.shape[1], k, generator=g, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
    with _small_linalg(x.device):
        q, _ = torch.linalg.qr(x @ omega)
        q, _ = torch.linalg.qr(x @ (x.transpose(0, 1) @ q))
        ub, s, vh = torch.linalg.svd(q.transpose(0, 1) @ x, full_matrices=False)
    keep = int(kept_mask(s, (x * x).sum()).sum().clamp_min(1))
    return (q @ ub)[:, :keep], s[:keep, None] * vh[:keep]


# ----------------------------------------------------------------------------------------------- per target
def _seed_of(target: Target, index: int) -> int:
    return zlib.crc32(f"{target}#{index}".encode())


def _scatter(local: torch.Tensor, present: Sequence[int], n: int, fill: float) -> torch.Tensor:
    out = torch.full((n, n), fill, dtype=torch.float64)
    idx = torch.tensor(present)
    out[idx[:, None], idx[None, :]] = local.detach().to("cpu", torch.float64)
    return out


def _target_metrics(change: TargetChange, present, local: dict[str, torch.Tensor], n: int, base_sq) -> TargetMetrics:
    kept = torch.zeros(n, dtype=torch.float64)
    kept[torch.tensor(present)] = local["kept"].detach().to("cpu", torch.float64)
    return TargetMetrics(
        change.target,
        change.block,
        tuple(present),
        _scatter(local["gram"], present, n, 0.0),
        _scatter(local["out_overlap"], present, n, float("nan")),
        _scatter(local["in_overlap"], present, n, float("nan")),
        _scatter(local["out_chance"], present, n, float("nan")),
        _scatter(local["in_chance"], present, n, float("nan")),
        kept,
        base_sq,
    )


def _measure_lowrank_batch(
    changes: list[TargetChange], factors: list[list[tuple[torch.Tensor, torch.Tensor]]], n: int, base_sq: list, dtype
) -> list[TargetMetrics]:
    """Targets of one shape whose parts are all plain low-rank with the same ranks: one batched pass. The factors
    (in the file's dtype) are copied once into the concatenated batch, converting on the way."""
    sizes = [up.shape[1] for up, _ in factors[0]]
    out_dim, in_dim = factors[0][0][0].shape[0], factors[0][0][1].shape[1]
    device = factors[0][0][0].device
    u = torch.empty(len(changes), out_dim, sum(sizes), dtype=dtype, device=device)
    d = torch.empty(len(changes), sum(sizes), in_dim, dtype=dtype, device=device)
    for b, (change, pairs) in enumerate(zip(changes, factors)):
        start = 0
        for part, (up, down), size in zip(change.parts, pairs, sizes):
            u[b, :, start : start + size].copy_(up).mul_(part.strength)
            d[b, start : start + size].copy_(down)
            start += size
    result = lowrank_metrics(u, d, sizes)
    out = []
    for b, change in enumerate(changes):
        present = [p.index for p in change.parts]
        out.append(_target_metrics(change, present, {k: v[b] for k, v in result.items()}, n, base_sq[b]))
    return out


def _measure_dense(change: TargetChange, parts, w0, n: int, base_sq, dtype, device) -> TargetMetrics:
    """Any mix of adapters: exact Gram from the dense changes; spaces from the factors, or the dominant directions
    of a dense change."""
    dense, ups, downs = [], [], []
    for part in parts:
        pair = part.factors(dtype, device)
        if pair is not None:
            up, down = pair[0] * part.strength, pair[1]
            dense.append(up @ down)
        else:
            x = part.unit_change(change.shape, w0=w0, dtype=dtype, device=device) * part.strength
            dense.append(x)
            up, down = dominant_factors(x, _seed_of(change.target, part.index))
        ups.append(up)
        downs.append(down)
    result = lowrank_metrics(torch.cat(ups, 1)[None], torch.cat(downs, 0)[None], [x.shape[1] for x in ups])
    flat = torch.stack([d.reshape(-1) for d in dense]).double()  # fp32 dot products of 10⁶ terms lose 1e-4
    local = {k: v[0] for k, v in result.items()}
    local["gram"] = flat @ flat.T
    return _target_metrics(change, [p.index for p in parts], local, n, base_sq)


def aggregate(label: str, targets: Sequence[TargetMetrics], n: int) -> BlockMetrics:
    gram = torch.zeros(n, n, dtype=torch.float64)
    sums = {k: torch.zeros(n, n, dtype=torch.float64) for k in ("out_overlap", "in_overlap", "out_chance", "in_chance")}
    weight = torch.zeros(n, n, dtype=torch.float64)
    base_sq: float | None = 0.0
    for t in targets:
        gram += t.gram
        d = t.gram.diagonal().clamp_min(0).sqrt()
        w = d[:, None] * d[None, :]
        valid = ~torch.isnan(t.out_overlap)
        w = torch.where(valid, w, torch.zeros_like(w))
        weight += w
        for k in sums:
            sums[k] += torch.where(valid, getattr(t, k) * w, torch.zeros_like(w))
        base_sq = None if base_sq is None or t.base_sq is None else base_sq + t.base_sq
    nan = torch.full_like(weight, float("nan"))
    avg = {k: torch.where(weight > 0, v / weight.clamp_min(1e-300), nan) for k, v in sums.items()}
    return BlockMetrics(label, len(targets), gram, base_sq=base_sq if targets else None, **avg)


def measure(
    items: Sequence[StackItem],
    family: Family | str,
    *,
    base: BaseCheckpoint | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    progress: ProgressFn = no_progress,
) -> StackMetrics:
    """Measure a stack (strengths and block weights applied). ``base`` adds ‖W0‖ per target (and lets the
    multiplicative adapters be measured at W0); a checkpoint that lacks a changed tensor raises ``CheckpointError``."""
    start = time.perf_counter()
    family = Family(family)
    n = len(items)
    changes = collect_changes(items, family)
    if base is not None:
        if base.family != family:
            raise CheckpointError(base.path, f"is an {base.family.value.upper()} model; the stack is {family.value.upper()}")
        faults = [f for f in (base.fault(c.target, c.shape) for c in changes) if f]
        if faults:
            more = f" (and {len(faults) - 1} more)" if len(faults) > 1 else ""
            raise CheckpointError(base.path, faults[0] + more)
    skipped: list[str] = []
    groups: dict[tuple, list[tuple[TargetChange, list]]] = {}
    dense: list[TargetChange] = []
    for change in changes:
        pairs = [p.factors(p.stored_dtype, device) for p in change.parts]
        if all(pair is not None for pair in pairs):
            key = (change.shape2d, tuple((p.index, pair[0].shape[1]) for p, pair in zip(change.parts, pairs)))
            groups.setdefault(key, []).append((change, pairs))
        else:
            dense.append(change)
    total = len(changes)
    done = 0
    results: dict[Target, TargetMetrics] = {}

    def base_sq_of(change: TargetChange) -> float | None:
        if base is None:
            return None
        w0 = base.weight(change.target)
        return float(w0.double().pow(2).sum())

    for members in groups.values():
        for i in range(0, len(members), BATCH):
            chunk = members[i : i + BATCH]
            cs = [c for c, _ in chunk]
            measured = _measure_lowrank_batch(cs, [f for _, f in chunk], n, [base_sq_of(c) for c in cs], dtype)
            for m in measured:
                results[m.target] = m
            done += len(chunk)
            progress(done, total, "doctor")
    for change in dense:
        w0 = base.weight(change.target, dtype=dtype, device=device) if base is not None else None
        parts = change.parts
        if w0 is None and change.needs_base:
            for p in parts:
                if not p.additive:
                    skipped.append(
                        f"{items[p.index].name}: {change.target} ({p.adapter.label}) depends on the base weights; "
                        "give the base checkpoint to include it"
                    )
            parts = [p for p in parts if p.additive]
        if parts:
            bsq = None if w0 is None else float(w0.double().pow(2).sum())
            results[change.target] = _measure_dense(change, parts, w0, n, bsq, dtype, device)
        done += 1
        progress(done, total, "doctor")
    if total == 0:
        progress(0, 0, "doctor")
    ordered = [results[c.target] for c in changes if c.target in results]
    layout = FULL_LAYOUT[family]
    by_block: dict[str, list[TargetMetrics]] = {}
    for t in ordered:
        by_block.setdefault(t.block, []).append(t)
    blocks = {b: aggregate(b, by_block[b], n) for b in (*layout, OTHER) if b in by_block}
    unet = [t for t in ordered if not t.target.component.is_text_encoder]
    te = [t for t in ordered if t.target.component.is_text_encoder]
    return StackMetrics(
        family,
        [it.name for it in items],
        ordered,
        blocks,
        aggregate("UNET", unet, n) if unet else None,
        aggregate("TE", te, n) if te else None,
        skipped,
        time.perf_counter() - start,
        base is not None,
    )


__all__ = ["BlockMetrics", "StackMetrics", "TargetMetrics", "aggregate", "measure"]
