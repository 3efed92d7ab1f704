"""Best rank-k approximation of a change (truncated SVD, Eckart–Young): from low-rank factors without forming the
matrix, or from a dense matrix. Reports the energy kept and the error (= √ of the discarded σ²)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Truncation:
    up: torch.Tensor  # [out, k], σ folded in
    down: torch.Tensor  # [k, in]
    total: float  # ‖X‖² = Σσ²
    kept: float  # Σ of the kept σ²

    @property
    def rank(self) -> int:
        return int(self.up.shape[1])

    @property
    def error(self) -> float:
        """‖X − up·down‖_F = √(Σ discarded σ²)."""
        return math.sqrt(max(self.total - self.kept, 0.0))

    @property
    def kept_share(self) -> float:
        return self.kept / self.total if self.total > 0 else 1.0


def _truncate(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> Truncation:
    k = max(0, min(rank, int(s.shape[0])))
    e = (s.double() ** 2)
    total = float(e.sum())
    kept = float(e[:k].sum())
    return Truncation((u[:, :k] * s[:k]).contiguous(), vh[:k].contiguous(), total, kept)


def truncate_factors(up: torch.Tensor, down: torch.Tensor, rank: int) -> Truncation:
    """Best rank-``rank`` approximation of ``up @ down`` ([out, R] @ [R, in]): thin QRs of both factors and the SVD
    of the small ``R_u·R_dᵀ``, so the cost is O((out + in)·R²), not O(out·in·min(out, in))."""
    qu, ru = torch.linalg.qr(up)
    qd, rd = torch.linalg.qr(down.transpose(0, 1))
    a, s, bh = torch.linalg.svd(ru @ rd.transpose(0, 1), full_matrices=False)
    return _truncate(qu @ a, s, bh @ qd.transpose(0, 1), rank)


def truncate_dense(x: torch.Tensor, rank: int) -> Truncation:
    """Best rank-``rank`` approximation of a dense ``x`` [out, in]."""
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    return _truncate(u, s, vh, rank)
