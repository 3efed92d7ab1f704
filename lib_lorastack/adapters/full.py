"""Full / diff: the file stores ΔW (``diff``) and optionally Δbias (``diff_b``) directly."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import Adapter, WeightUpdate


class Full(Adapter):
    algo: ClassVar[str] = "full"

    @classmethod
    def accepts(cls, suffixes: frozenset[str]) -> bool:
        return "diff" in suffixes and suffixes <= {"diff", "diff_b", "alpha"}

    def update(self, weight: torch.Tensor, *, dtype=torch.float32, device=None) -> WeightUpdate:
        device = weight.device if device is None else device
        diff = self.tensors["diff"].to(device=device, dtype=dtype).reshape(weight.shape)
        bias = self.tensors.get("diff_b")
        return WeightUpdate(diff, None if bias is None else bias.to(device=device, dtype=dtype))

    def validate(self, weight_shape) -> str | None:
        if self.tensors["diff"].numel() != torch.Size(weight_shape).numel():
            return f"diff {tuple(self.tensors['diff'].shape)} does not fit a layer of shape {tuple(weight_shape)}"
        return None
