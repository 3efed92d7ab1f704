"""DoRA: a low-rank change followed by a magnitude/direction split.

W1 = W + ΔW_inner; W' = W1 · m / ‖W1‖, the norm taken per output row or per input column. The file tells
which: LyCORIS/kohya ``dora_scale`` shaped ``[out, 1, …]`` is per row, ``[1, in, …]`` per column (the WebUI
only knows the column form); PEFT's ``lora_magnitude_vector`` ``[out]`` is per row.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch

from .base import Adapter, WeightUpdate

MAGNITUDE_KEYS = ("dora_scale", "lora_magnitude_vector")


class DoRA(Adapter):
    algo: ClassVar[str] = "dora"
    additive: ClassVar[bool] = False

    def __init__(self, tensors, inner: Adapter) -> None:
        super().__init__(tensors)
        self.inner = inner
        key = next(k for k in MAGNITUDE_KEYS if k in tensors)
        self.magnitude = tensors[key]
        self.per_row = key == "lora_magnitude_vector" or (self.magnitude.dim() > 1 and self.magnitude.shape[0] != 1)
        if key == "dora_scale" and self.magnitude.dim() > 1 and self.magnitude.shape[0] == self.magnitude.shape[1] == 1:
            self.per_row = True  # [1, 1, …]: a one-row layer; either reading gives the same norm axis

    @classmethod
    def accepts(cls, suffixes: frozenset[str]) -> bool:
        return any(k in suffixes for k in MAGNITUDE_KEYS)

    @property
    def label(self) -> str:
        return f"dora({self.inner.label})"

    @property
    def rank(self) -> int | None:
        return self.inner.rank

    @property
    def alpha(self) -> float | None:
        return self.inner.alpha

    @property
    def scale(self) -> float:
        return self.inner.scale

    def update(self, weight: torch.Tensor, *, dtype=torch.float32, device=None) -> WeightUpdate:
        device = weight.device if device is None else device
        base = weight.to(device=device, dtype=dtype)
        inner = self.inner.update(weight, dtype=dtype, device=device)
        w1 = base + inner.weight
        if self.per_row:
            norm = w1.reshape(w1.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (w1.dim() - 1)))
        else:
            norm = w1.transpose(0, 1).reshape(w1.shape[1], -1).norm(dim=1)
            norm = norm.reshape(1, -1, *([1] * (w1.dim() - 2)))
        mag = self.magnitude.to(device=device, dtype=dtype).reshape(norm.shape)
        return WeightUpdate(w1 * (mag / norm) - base, inner.bias)

    @property
    def graph_safe(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "graph_safe", False))

    def on_device(self, device):
        moved = copy.copy(self)  # the update reads only ``inner`` and ``magnitude``
        moved.inner = self.inner.on_device(device)
        moved.magnitude = self.magnitude.to(device)
        return moved

    def device_nbytes(self) -> int:
        return self.inner.device_nbytes() + self.magnitude.numel() * self.magnitude.element_size()

    def validate(self, weight_shape) -> str | None:
        fault = self.inner.validate(weight_shape)
        if fault:
            return fault
        want = weight_shape[0] if self.per_row else weight_shape[1]
        if self.magnitude.numel() != want:
            return f"DoRA magnitude {tuple(self.magnitude.shape)} does not fit a layer of shape {tuple(weight_shape)}"
        return None
