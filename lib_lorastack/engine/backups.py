"""Pristine copies of the parameters a stack touches, and only those."""

from __future__ import annotations

import torch

from .plan import ParamKey


class BackupStore:
    """``key → pristine tensor``. On a CUDA model the copies live in pinned CPU memory (``device="cpu"``) or
    beside the weights (``device="device"``); a copy is dropped as soon as its parameter is pristine again."""

    def __init__(self, device: str = "cpu") -> None:
        if device not in ("cpu", "device"):
            raise ValueError(f"backup device must be 'cpu' or 'device', not {device!r}")
        self.device = device
        self._saved: dict[ParamKey, torch.Tensor] = {}

    def __contains__(self, key: ParamKey) -> bool:
        return key in self._saved

    def save(self, key: ParamKey, param: torch.Tensor) -> int:
        """Keep a copy of ``param`` unless one is kept already; the bytes newly copied."""
        if key in self._saved:
            return 0
        if self.device == "device" or param.device.type == "cpu":
            copy = param.detach().clone()
        else:
            copy = torch.empty(param.shape, dtype=param.dtype, pin_memory=torch.cuda.is_available())
            copy.copy_(param.detach())
        self._saved[key] = copy
        return copy.numel() * copy.element_size()

    def pristine(self, key: ParamKey, device: torch.device) -> torch.Tensor:
        return self._saved[key].to(device, non_blocking=True)

    def restore(self, key: ParamKey, param: torch.Tensor) -> None:
        """Write the pristine value back (bit for bit) and forget the copy."""
        with torch.no_grad():
            param.copy_(self._saved.pop(key))

    def drop(self, key: ParamKey) -> None:
        self._saved.pop(key, None)

    def keys(self) -> list[ParamKey]:
        return list(self._saved)

    def __iter__(self):
        return iter(list(self._saved))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._saved.values())
