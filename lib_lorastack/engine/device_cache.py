"""LoRA factors on the compute device, moved once and kept while used, under a byte budget (LRU). On the CPU the
factors are (normally) the parsed file's own tensors: nothing is kept."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch

from ..adapters.base import Adapter
from .plan import Bound


class Factors(NamedTuple):
    """A low-rank change ``scale · up @ down`` with the factors in the file's own dtype, on the device."""

    up: torch.Tensor  # [out, r]
    down: torch.Tensor  # [r, fan_in]
    scale: float
    up_amax: float  # max |up| · |scale|, from the file (no device round trip)


class FactorCache:
    def __init__(self, budget_bytes: int = 2 << 30) -> None:
        self.budget = budget_bytes
        self._entries: OrderedDict[tuple, Factors | None] = OrderedDict()
        self._adapters: OrderedDict[tuple, tuple[Adapter, Adapter]] = OrderedDict()  # (source, device copy)
        self._bytes = 0
        self.misses = 0

    def factors(self, bound: Bound, device: torch.device) -> Factors | None:
        """The plain low-rank factors of ``bound``'s adapter on ``device``; None when it is not low-rank (or when it
        changes a row block or a bias: those go through the adapter's own update)."""
        if bound.target.rows is not None or "bias" in bound.adapter.tensors:
            return None
        key = (bound.ident, str(device))
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        native = bound.adapter.low_rank_native(device=device)
        entry = None
        if native is not None:
            up, down, scale = native
            source_up = bound.adapter.tensors.get("lora_up.weight")
            amax = float(source_up.detach().abs().max()) if source_up is not None and source_up.numel() else 0.0
            entry = Factors(up, down, float(scale), amax * abs(float(scale)))
        if torch.device(device).type == "cpu":
            return entry  # the file's own tensors: keeping them would only keep a file alive after its LoRA went
        if entry is not None:
            self._bytes += _nbytes(entry.up) + _nbytes(entry.down)
        self._entries[key] = entry
        self._evict()
        return entry

    def adapter(self, bound: Bound, device: torch.device) -> Adapter:
        """``bound``'s adapter with its factor tensors on ``device`` (the adapter itself on the CPU), kept under the
        same budget: the engine's writes then move nothing (and a CUDA graph of them can be captured)."""
        if device.type == "cpu":
            return bound.adapter
        key = (bound.ident, str(device), "adapter")
        entry = self._adapters.get(key)
        if entry is not None and entry[0] is bound.adapter:
            self._adapters.move_to_end(key)
            return entry[1]
        moved = bound.adapter.on_device(device)
        self._adapters[key] = (bound.adapter, moved)
        self._bytes += moved.device_nbytes()
        self._evict()
        return moved

    def _evict(self) -> None:
        while self._bytes > self.budget and len(self._adapters) > 1:
            _, (_, moved) = self._adapters.popitem(last=False)
            self._bytes -= moved.device_nbytes()
        while self._bytes > self.budget and len(self._entries) > 1:
            _, entry = self._entries.popitem(last=False)
            if entry is not None:
                self._bytes -= _nbytes(entry.up) + _nbytes(entry.down)

    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        self._entries.clear()
        self._adapters.clear()
        self._bytes = 0


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
