"""LoHa: ΔW = scale · (w1a @ w1b) ⊙ (w2a @ w2b), each factor optionally CP/Tucker (``hada_t1``/``hada_t2``).

The scale (and, in ``add_to``, the strength) is folded into the small ``w2a``; adding the change to a weight is then
the two products and one fused multiply-add pass over the weight."""

from __future__ import annotations

from typing import ClassVar

import torch

from ._common import flat2d, rebuild_tucker
from .base import RankScaled, WeightUpdate


class LoHa(RankScaled):
    algo: ClassVar[str] = "loha"
    graph_safe: ClassVar[bool] = True
    _required = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"})
    _optional = frozenset({"hada_t1", "hada_t2", "alpha", "scale"})

    @classmethod
    def accepts(cls, suffixes: frozenset[str]) -> bool:
        return cls._required <= suffixes and suffixes <= cls._required | cls._optional

    @property
    def rank(self) -> int:
        return int(self.tensors["hada_w1_b"].shape[0])

    def _factor(self, i: int, shape, dtype, device, factor=None) -> torch.Tensor:
        a = self.tensors[f"hada_w{i}_a"].to(device=device, dtype=dtype)
        b = self.tensors[f"hada_w{i}_b"].to(device=device, dtype=dtype)
        if factor is not None:
            a = a * factor
        t = self.tensors.get(f"hada_t{i}")
        if t is not None:
            # LyCORIS stores a [rank, out] and b [rank, in] around a [rank, rank, k, k] core.
            return rebuild_tucker(t.to(device=device, dtype=dtype), a, flat2d(b)).reshape(shape)
        return (a @ flat2d(b)).reshape(shape)

    def update(self, weight: torch.Tensor, *, dtype=torch.float32, device=None) -> WeightUpdate:
        device = weight.device if device is None else device
        shape = weight.shape
        return WeightUpdate(self._factor(1, shape, dtype, device) * self._factor(2, shape, dtype, device, self.scale))

    def add_to(self, weight: torch.Tensor, strength: torch.Tensor) -> torch.Tensor | None:
        shape, dtype, device = weight.shape, weight.dtype, weight.device
        weight.addcmul_(self._factor(1, shape, dtype, device), self._factor(2, shape, dtype, device, strength * self.scale))
        return None
