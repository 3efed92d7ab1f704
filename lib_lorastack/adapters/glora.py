"""GLoRA: ΔW = scale · (W @ a1 @ a2 + b1 @ b2) — depends on W, so it is applied in stack order."""

from __future__ import annotations

from typing import ClassVar

import torch

from ._common import flat2d, rebuild_tucker
from .base import RankScaled, WeightUpdate


class GLoRA(RankScaled):
    algo: ClassVar[str] = "glora"
    additive: ClassVar[bool] = False
    _required = frozenset({"a1.weight", "a2.weight", "b1.weight", "b2.weight"})

    @classmethod
    def accepts(cls, suffixes: frozenset[str]) -> bool:
        return cls._required <= suffixes and suffixes <= cls._required | {"bm.weight", "alpha"}

    @property
    def rank(self) -> int:
        return int(self.tensors["a2.weight"].shape[0])

    def update(self, weight: torch.Tensor, *, dtype=torch.float32, device=None) -> WeightUpdate:
        device = weight.device if device is None else device
        t = {k: v.to(device=device, dtype=dtype) for k, v in self.tensors.items() if k.endswith(".weight")}
        base = weight.to(device=device, dtype=dtype)
        a1, a2 = flat2d(t["a1.weight"]), flat2d(t["a2.weight"])  # [in, r], [r, in]
        b1, b2 = flat2d(t["b1.weight"]), t["b2.weight"]
        if "bm.weight" in t:
            wb = rebuild_tucker(t["bm.weight"], b1.t(), flat2d(b2))
        else:
            wb = (b1 @ flat2d(b2)).reshape(base.shape)
        wa = torch.einsum("oi...,ir,rj->oj...", base, a1, a2)
        return WeightUpdate((wa + wb) * self.scale)
