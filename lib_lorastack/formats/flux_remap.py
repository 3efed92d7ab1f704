"""An adapter seen through a row permutation: diffusers' ``norm_out.linear`` (scale | shift) applied to BFL's
``final_layer.adaLN_modulation.1`` (shift | scale). The change is computed in the file's row order and its two
row halves are swapped, for any algorithm (a multiplicative one sees the weight in the file's order too)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..adapters.base import Adapter, WeightUpdate
from .flux_names import SWAP_SCALE_SHIFT


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    half = t.shape[0] // 2
    return torch.cat((t[half:], t[:half]))


class SwappedHalves(Adapter):
    """``inner``'s change with its first and second row halves exchanged (an involution: same map both ways)."""

    algo: ClassVar[str] = "swapped"

    def __init__(self, inner: Adapter) -> None:
        super().__init__(inner.tensors)
        self.inner = inner
        self.additive = inner.additive
        self.algo = inner.algo  # type: ignore[misc]  # users (and bake's rank choice) see the wrapped algorithm

    @classmethod
    def accepts(cls, suffixes: frozenset[str]) -> bool:
        return False  # never picked from keys: the key map wraps an adapter it already built

    @property
    def label(self) -> str:
        return self.inner.label

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
        u = self.inner.update(_swap_halves(weight), dtype=dtype, device=device)
        return WeightUpdate(_swap_halves(u.weight), None if u.bias is None else _swap_halves(u.bias))

    def low_rank_factors(self, *, dtype=torch.float32, device=None):
        factors = self.inner.low_rank_factors(dtype=dtype, device=device)
        return None if factors is None else (_swap_halves(factors[0]), factors[1])

    def low_rank_native(self, *, device=None):
        native = self.inner.low_rank_native(device=device)
        return None if native is None else (_swap_halves(native[0]).contiguous(), native[1], native[2])

    def validate(self, weight_shape) -> str | None:
        if weight_shape[0] % 2:
            return f"a scale/shift layer needs an even number of rows, this one has {weight_shape[0]}"
        return self.inner.validate(weight_shape)


def remap_adapter(adapter: Adapter, remap: str | None) -> Adapter:
    """``adapter`` as the target's layout needs it."""
    if remap is None:
        return adapter
    if remap == SWAP_SCALE_SHIFT:
        return SwappedHalves(adapter)
    raise ValueError(f"unknown remap {remap!r}")
