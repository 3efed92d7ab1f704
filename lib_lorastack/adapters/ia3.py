"""IA3: scales the weight per output row (or per input column with ``on_input``): W' = W ⊙ (1 + w)."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import Adapter, WeightUpdate


class IA3(Adapter):
    algo: ClassVar[str] = "ia3"
    additive: ClassVar[bool] = False

    @classmethod
    def accepts(cls, suffixes: frozenset[str]) -> bool:
        return "weight" in suffixes and suffixes <= {"weight", "on_input", "alpha"}

    @property
    def on_input(self) -> bool:
        flag = self.tensors.get("on_input")
        return bool(flag.reshape(-1)[0]) if flag is not None and flag.numel() else False

    def update(self, weight: torch.Tensor, *, dtype=torch.float32, device=None) -> WeightUpdate:
        device = weight.device if device is None else device
        w = self.tensors["weight"].to(device=device, dtype=dtype).reshape(-1)
        base = weight.to(device=device, dtype=dtype)
        view = [1] * base.dim()
        axis = 1 if self.on_input else 0
        view[axis] = -1
        return WeightUpdate(base * w.reshape(view))

    def validate(self, weight_shape) -> str | None:
        axis = 1 if self.on_input else 0
        n = self.tensors["weight"].numel()
        if len(weight_shape) < 2 or n != weight_shape[axis]:
            return f"IA3 weight of {n} values does not fit a layer of shape {tuple(weight_shape)}"
        return None
