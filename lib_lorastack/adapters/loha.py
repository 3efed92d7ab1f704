"""LoHa: ΔW = scale · (w1a @ w1b) ⊙ (w2a @ w2b), each factor optionally CP/Tucker (``hada_t1``/``hada_t2``)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ._common import flat2d, rebuild_tucker, scalar
from .base import Adapter, WeightUpdate


class LoHa(Adapter):
    algo: ClassVar[str] = "loha"
    _required = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"})
    _optional = frozenset({"hada_t1", "hada_t2", "alpha", "scale"})

    @classmethod
    def accepts(cls, suffixes: frozenset[str]) -> bool:
        return cls._required <= suffixes and suffixes <= cls._required | cls._optional

    @property
    def rank(self) -> int:
        return int(self.tensors["hada_w1_b"].shape[0])

    @property
    def alpha(self) -> float | None:
        return scalar(self.tensors.get("alpha"))

    @property
    def scale(self) -> float:
        if "scale" in self.tensors:
            return float(scalar(self.tensors["scale"]))
        return self.alpha / self.rank if self.alpha is not None else 1.0

    def _factor(self, i: int, shape, dtype, device) -> torch.Tensor:
        a = self.tensors[f"hada_w{i}_a"].to(device=device, dtype=dtype)
        b = self.tensors[f"hada_w{i}_b"].to(device=device, dtype=dtype)
        t = self.tensors.get(f"hada_t{i}")
        if t is not None:
            # LyCORIS stores a [rank, out] and b [rank, in] around a [rank, rank, k, k] core.
            return rebuild_tucker(t.to(device=device, dtype=dtype), a, flat2d(b))
        return (a @ flat2d(b)).reshape(shape)

    def update(self, weight: torch.Tensor, *, dtype=torch.float32, device=None) -> WeightUpdate:
        device = weight.device if device is None else device
        shape = weight.shape
        delta = self._factor(1, shape, dtype, device) * self._factor(2, shape, dtype, device)
        return WeightUpdate(delta.reshape(shape) * self.scale)

    def validate(self, weight_shape) -> str | None:
        try:
            self.update(torch.empty(weight_shape, device="meta"), device="meta")
        except RuntimeError as e:
            return f"LoHa factors do not fit a layer of shape {tuple(weight_shape)}: {e}"
        return None
