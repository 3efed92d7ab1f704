"""Helpers shared by the adapter classes."""

from __future__ import annotations

import torch


def scalar(t: torch.Tensor | None) -> float | None:
    if t is None:
        return None
    return float(t.detach().float().reshape(-1)[0]) if t.numel() else None


def flat2d(t: torch.Tensor) -> torch.Tensor:
    """[a, b, …] → [a, b·…] (conv kernels folded into the second axis)."""
    return t.reshape(t.shape[0], -1)


def rebuild_tucker(core: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """CP/Tucker rebuild: ``core [p, q, k…]``, ``left [p, out]`` and ``right [q, in]`` → ``[out, in, k…]``."""
    return torch.einsum("pq...,po,qi->oi...", core, left, right)


def numel_of(shape: tuple[int, ...] | torch.Size) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
