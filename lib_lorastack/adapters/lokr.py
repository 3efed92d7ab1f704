"""LoKr: ΔW = scale · kron(w1, w2), each of w1/w2 full or a low-rank product (w2 optionally Tucker with ``lokr_t2``)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ._common import flat2d, rebuild_tucker
from .base import RankScaled, WeightUpdate


class LoKr(RankScaled):
    algo: ClassVar[str] = "lokr"
    _all = frozenset(
        {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha", "scale"}
    )

    @classmethod
    def accepts(cls, suffixes: frozenset[str]) -> bool:
        has_w1 = "lokr_w1" in suffixes or {"lokr_w1_a", "lokr_w1_b"} <= suffixes
        has_w2 = "lokr_w2" in suffixes or {"lokr_w2_a", "lokr_w2_b"} <= suffixes
        return has_w1 and has_w2 and suffixes <= cls._all

    @property
    def rank(self) -> int | None:
        for key in ("lokr_w1_b", "lokr_w2_b"):
            if key in self.tensors:
                return int(self.tensors[key].shape[0])
        return None  # both factors full: no rank, alpha is ignored (scale 1), as the WebUI and LyCORIS

    def _w(self, i: int, dtype, device) -> torch.Tensor:
        full = self.tensors.get(f"lokr_w{i}")
        if full is not None:
            return full.to(device=device, dtype=dtype)
        a = self.tensors[f"lokr_w{i}_a"].to(device=device, dtype=dtype)
        b = self.tensors[f"lokr_w{i}_b"].to(device=device, dtype=dtype)
        t = self.tensors.get(f"lokr_t{i}")
        if t is not None:
            return rebuild_tucker(t.to(device=device, dtype=dtype), a, flat2d(b))
        if b.dim() > 2:  # conv w2 kept as [rank, in, k, k]
            return torch.einsum("or,ri...->oi...", a, b)
        return a @ b

    def update(self, weight: torch.Tensor, *, dtype=torch.float32, device=None) -> WeightUpdate:
        device = weight.device if device is None else device
        w1, w2 = self._w(1, dtype, device), self._w(2, dtype, device)
        while w1.dim() < w2.dim():
            w1 = w1.unsqueeze(-1)
        delta = torch.kron(w1, w2.contiguous())
        return WeightUpdate(delta.reshape(weight.shape) * self.scale)
