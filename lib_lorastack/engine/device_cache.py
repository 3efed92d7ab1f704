"""LoRA factors on the compute device, moved once and kept while used, under a byte budget (LRU)."""

from __future__ import annotations

from collections import OrderedDict

import torch

from .plan import Contribution


class FactorCache:
    def __init__(self, budget_bytes: int = 2 << 30) -> None:
        self.budget = budget_bytes
        self._entries: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor] | None] = OrderedDict()
        self._bytes = 0
        self.misses = 0

    def factors(
        self, c: Contribution, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(up·scale, down)`` of a plain low-rank adapter on ``device``, or None when it is not low-rank."""
        key = (c.lora.identity, str(c.target), dtype, str(device))
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        pair = c.adapter.low_rank_factors(dtype=dtype, device=device)
        self._entries[key] = pair
        if pair is not None:
            self._bytes += sum(t.numel() * t.element_size() for t in pair)
            self._evict()
        return pair

    def _evict(self) -> None:
        while self._bytes > self.budget and len(self._entries) > 1:
            _, pair = self._entries.popitem(last=False)
            if pair is not None:
                self._bytes -= sum(t.numel() * t.element_size() for t in pair)

    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
