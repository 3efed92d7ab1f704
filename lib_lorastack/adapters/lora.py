"""LoRA and LoCon: ΔW = scale · up @ down (convs: down is k×k, up is 1×1), optional CP/Tucker ``lora_mid``."""

from __future__ import annotations

from typing import ClassVar

import torch

from ._common import flat2d, numel_of, rebuild_tucker
from .base import RankScaled, WeightUpdate


class LoRA(RankScaled):
    algo: ClassVar[str] = "lora"
    additive: ClassVar[bool] = True
    graph_safe: ClassVar[bool] = True
    _required = frozenset({"lora_up.weight", "lora_down.weight"})
    _optional = frozenset({"lora_mid.weight", "alpha", "scale", "bias"})

    def __init__(self, tensors, *, dyn: int | None = None) -> None:
        super().__init__(tensors)
        self.dyn = dyn

    @classmethod
    def accepts(cls, suffixes: frozenset[str]) -> bool:
        return cls._required <= suffixes and suffixes <= cls._required | cls._optional

    @property
    def up(self) -> torch.Tensor:
        return self.tensors["lora_up.weight"]

    @property
    def down(self) -> torch.Tensor:
        return self.tensors["lora_down.weight"]

    @property
    def mid(self) -> torch.Tensor | None:
        return self.tensors.get("lora_mid.weight")

    @property
    def label(self) -> str:
        conv_kernel = self.down.dim() == 4 and tuple(self.down.shape[2:]) != (1, 1)
        return "locon" if conv_kernel or self.mid is not None else "lora"

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def _factors(self, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        up = flat2d(self.up).to(device=device, dtype=dtype)
        down = self.down.to(device=device, dtype=dtype)
        if self.dyn is not None:  # DyLoRA: keep the first `dyn` ranks; the scale keeps the full rank (as the WebUI)
            up, down = up[:, : self.dyn], down[: self.dyn]
        return up, down

    def low_rank_factors(self, *, dtype=torch.float32, device=None):
        if self.mid is not None:
            return None
        up, down = self._factors(dtype, device)
        return up * self.scale, flat2d(down)

    def low_rank_native(self, *, device=None):
        if self.mid is not None:
            return None
        dtype = torch.promote_types(self.up.dtype, self.down.dtype)
        up, down = self._factors(dtype, device)
        return up.contiguous(), flat2d(down).contiguous(), self.scale

    def update(self, weight: torch.Tensor, *, dtype=torch.float32, device=None) -> WeightUpdate:
        device = weight.device if device is None else device
        up, down = self._factors(dtype, device)
        if self.mid is not None:
            mid = self.mid.to(device=device, dtype=dtype)
            delta = rebuild_tucker(mid, up.t(), flat2d(down))
        else:
            delta = up @ flat2d(down)
        delta = delta.reshape(weight.shape) * self.scale
        bias = self.tensors.get("bias")
        return WeightUpdate(delta, None if bias is None else bias.to(device=device, dtype=dtype) * self.scale)

    def add_to(self, weight: torch.Tensor, strength: torch.Tensor) -> torch.Tensor | None:
        """The strength and scale folded into ``up``: one product (Tucker: one rebuild) added into the weight."""
        up, down = self._factors(weight.dtype, weight.device)
        factor = strength * self.scale
        up = up * factor
        if self.mid is not None:
            mid = self.mid.to(device=weight.device, dtype=weight.dtype)
            weight.add_(rebuild_tucker(mid, up.t(), flat2d(down)).reshape(weight.shape))
        elif weight.is_contiguous():
            weight.view(weight.shape[0], -1).addmm_(up, flat2d(down))
        else:
            weight.add_((up @ flat2d(down)).reshape(weight.shape))
        bias = self.tensors.get("bias")
        return None if bias is None else bias.to(device=weight.device, dtype=weight.dtype) * factor

    def validate(self, weight_shape) -> str | None:
        up, down = self.up, self.down
        if up.dim() not in (2, 4) or down.dim() not in (2, 4):
            return f"lora_up {tuple(up.shape)} / lora_down {tuple(down.shape)} must be 2-D or 4-D"
        r_up = up.shape[1]
        if self.mid is not None:
            if tuple(self.mid.shape[:2]) != (r_up, down.shape[0]):
                return f"lora_mid {tuple(self.mid.shape)} does not fit lora_up {tuple(up.shape)} and lora_down {tuple(down.shape)}"
        elif r_up != down.shape[0]:
            return f"rank mismatch: lora_up {tuple(up.shape)} has rank {r_up}, lora_down {tuple(down.shape)} has {down.shape[0]}"
        if up.shape[0] != weight_shape[0]:
            return f"lora_up {tuple(up.shape)} has {up.shape[0]} outputs, the layer has {weight_shape[0]}"
        fan_in = numel_of(weight_shape[1:])
        got = down.shape[1] * (numel_of(self.mid.shape[2:]) if self.mid is not None else numel_of(down.shape[2:]))
        if got != fan_in:
            return f"lora_down {tuple(down.shape)} does not fit a layer of shape {tuple(weight_shape)}"
        return None
