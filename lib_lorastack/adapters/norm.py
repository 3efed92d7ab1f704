"""Norm: changes to a GroupNorm/LayerNorm's affine weight (``w_norm``) and bias (``b_norm``)."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import Adapter, WeightUpdate


class Norm(Adapter):
    algo: ClassVar[str] = "norm"

    @classmethod
    def accepts(cls, suffixes: frozenset[str]) -> bool:
        return "w_norm" in suffixes and suffixes <= {"w_norm", "b_norm", "alpha"}

    def update(self, weight: torch.Tensor, *, dtype=torch.float32, device=None) -> WeightUpdate:
        device = weight.device if device is None else device
        w = self.tensors["w_norm"].to(device=device, dtype=dtype).reshape(weight.shape)
        b = self.tensors.get("b_norm")
        return WeightUpdate(w, None if b is None else b.to(device=device, dtype=dtype))

    def validate(self, weight_shape) -> str | None:
        if len(weight_shape) != 1:
            return f"a norm adapter needs a 1-D norm weight, the layer's weight is {tuple(weight_shape)}"
        if self.tensors["w_norm"].numel() != weight_shape[0]:
            return f"w_norm {tuple(self.tensors['w_norm'].shape)} does not fit a norm of {weight_shape[0]} channels"
        return None
