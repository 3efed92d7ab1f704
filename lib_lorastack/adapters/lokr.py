"""LoKr: ΔW = scale · kron(w1, w2), each of w1/w2 full or a low-rank product (w2 optionally Tucker with ``lokr_t2``).

The Kronecker product is never materialised on its own: with the weight viewed as ``[a, c, b, d·k…]`` (w1 is
``[a, b]``, w2 ``[c, d, k…]``), ``kron(w1, w2)`` is the broadcast product ``w1[:, None, :, None] · w2[None, :, None, :]``,
so adding it to a weight is one pass over the weight with the scale and the strength folded into the small w1.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ._common import flat2d, rebuild_tucker
from .base import RankScaled, WeightUpdate


class LoKr(RankScaled):
    algo: ClassVar[str] = "lokr"
    graph_safe: ClassVar[bool] = True
    _all = frozenset(
        {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha", "scale"}
    )

    @classmethod
    def accepts(cls, suffixes: frozenset[str]) -> bool:
        has_w1 = "lokr_w1" in suffixes or {"lokr_w1_a", "lokr_w1_b"} <= suffixes
        has_w2 = "lokr_w2" in suffixes or {"lokr_w2_a", "lokr_w2_b"} <= suffixes
        return has_w1 and has_w2 and suffixes <= cls._all

    @property
    def rank(self) -> int | None:
        for key in ("lokr_w1_b", "lokr_w2_b"):
            if key in self.tensors:
                return int(self.tensors[key].shape[0])
        return None  # both factors full: no rank, alpha is ignored (scale 1), as the WebUI and LyCORIS

    def _w(self, i: int, dtype, device) -> torch.Tensor:
        full = self.tensors.get(f"lokr_w{i}")
        if full is not None:
            return full.to(device=device, dtype=dtype)
        a = self.tensors[f"lokr_w{i}_a"].to(device=device, dtype=dtype)
        b = self.tensors[f"lokr_w{i}_b"].to(device=device, dtype=dtype)
        t = self.tensors.get(f"lokr_t{i}")
        if t is not None:
            return rebuild_tucker(t.to(device=device, dtype=dtype), a, flat2d(b))
        if b.dim() > 2:  # conv w2 kept as [rank, in, k, k]
            return torch.einsum("or,ri...->oi...", a, b)
        return a @ b

    def _parts(self, shape, dtype, device, factor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]] | None:
        """``(w1 · factor [a, 1, b, 1], w2 [1, c, 1, d·k…], the weight's view shape [a, c, b, d·k…])``, or None when
        w1 is not a matrix (then only ``torch.kron`` knows the layout)."""
        w1, w2 = self._w(1, dtype, device), self._w(2, dtype, device)
        if w1.dim() != 2:
            return None
        a, b = w1.shape
        c = w2.shape[0]
        w2 = w2.reshape(c, -1)
        view = (a, c, b, w2.shape[1])
        return (w1 * factor).view(a, 1, b, 1), w2.view(1, c, 1, -1), view

    def update(self, weight: torch.Tensor, *, dtype=torch.float32, device=None) -> WeightUpdate:
        device = weight.device if device is None else device
        parts = self._parts(weight.shape, dtype, device, self.scale)
        if parts is None:
            w1, w2 = self._w(1, dtype, device), self._w(2, dtype, device)
            while w1.dim() < w2.dim():
                w1 = w1.unsqueeze(-1)
            return WeightUpdate(torch.kron(w1, w2.contiguous()).reshape(weight.shape) * self.scale)
        w1, w2, _view = parts
        return WeightUpdate((w1 * w2).reshape(weight.shape))

    def add_to(self, weight: torch.Tensor, strength: torch.Tensor) -> torch.Tensor | None:
        parts = self._parts(weight.shape, weight.dtype, weight.device, strength * self.scale)
        if parts is None or not weight.is_contiguous():
            return super().add_to(weight, strength)
        w1, w2, view = parts
        weight.view(view).addcmul_(w1, w2)  # one pass over the weight: W[a,c,b,·] += s·w1[a,b]·w2[c,·]
        return None
