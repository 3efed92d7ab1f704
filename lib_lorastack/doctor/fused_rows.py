"""One LoRA's changes of the row slices of a fused weight, as one change of the whole weight.

Forge's Flux fuses q, k, v (and single blocks' MLP input) into one weight (``img_attn.qkv`` [9216, 3072],
``linear1`` [21504, 3072]); diffusers/PEFT LoRAs change the parts, which the loader puts on row slices of it.
The doctor, bake and merge work per weight, so the parts of one LoRA become one change: ``ΔW`` has each part's
change in its rows and zeros elsewhere. When every part is a low-rank product ``U_i·D_i``, so is the whole, with
a block-diagonal up factor: ``up = [P_1U_1 | P_2U_2 | …]`` (``P_i`` puts the rows in place), ``down = [D_1; D_2;
…]``, so ``up·down = Σ P_i U_i D_i`` exactly. A kohya file stores that as one ``lora_down``/``lora_up`` pair of rank
Σr_i (what Forge, ComfyUI and diffusers' kohya Flux converter read; diffusers splits ``lora_up`` back by rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..adapters.base import Adapter, WeightUpdate


class RowsAdapter(Adapter):
    """Several adapters of one LoRA on row slices (``rows``: ``(start, stop)``, None = the whole weight) of one
    parameter with ``rows_total`` rows, seen as one adapter of the whole parameter."""

    algo = "rows"

    def __init__(self, pieces: Sequence[tuple[tuple[int, int] | None, Adapter]], rows_total: int) -> None:
        merged: dict[str, torch.Tensor] = {}
        for _, adapter in pieces:
            merged.update(adapter.tensors)
        super().__init__(merged)  # for the dtype of the factors and the bias keys only
        self.pieces = list(pieces)
        self.rows_total = int(rows_total)
        self.additive = all(a.additive for _, a in self.pieces)

    @classmethod
    def accepts(cls, suffixes: frozenset[str]) -> bool:
        return False  # never picked for a file's keys: built by the doctor only

    @property
    def label(self) -> str:
        labels = sorted({a.label for _, a in self.pieces})
        return labels[0] if len(labels) == 1 else "+".join(labels)

    @property
    def rank(self) -> int | None:
        ranks = [a.rank for _, a in self.pieces]
        return sum(ranks) if all(ranks) else None

    @property
    def parts_algo(self) -> str:
        algos = {a.algo for _, a in self.pieces}
        return algos.pop() if len(algos) == 1 else "mixed"

    def _span(self, rows: tuple[int, int] | None) -> tuple[int, int]:
        return (0, self.rows_total) if rows is None else rows

    def low_rank_factors(self, *, dtype=torch.float32, device=None):
        pairs = [a.low_rank_factors(dtype=dtype, device=device) for _, a in self.pieces]
        if any(p is None for p in pairs):
            return None
        total = sum(int(p[0].shape[1]) for p in pairs)
        up = torch.zeros(self.rows_total, total, dtype=dtype, device=pairs[0][0].device)
        col = 0
        for (rows, _), (u, _d) in zip(self.pieces, pairs):
            start, stop = self._span(rows)
            k = int(u.shape[1])
            up[start:stop, col : col + k] = u.reshape(stop - start, k)
            col += k
        down = torch.cat([d.reshape(d.shape[0], -1) for _, d in pairs], 0)
        return up, down

    def update(self, weight: torch.Tensor, *, dtype=torch.float32, device=None) -> WeightUpdate:
        device = weight.device if device is None else device
        delta = torch.zeros(weight.shape, dtype=dtype, device=device)
        bias = None
        for rows, adapter in self.pieces:
            start, stop = self._span(rows)
            part = adapter.update(weight[start:stop], dtype=dtype, device=device)
            delta[start:stop] += part.weight.reshape(stop - start, *weight.shape[1:])
            if part.bias is not None:
                if bias is None:
                    bias = torch.zeros(self.rows_total, dtype=dtype, device=device)
                bias[start:stop] += part.bias.reshape(-1)
        return WeightUpdate(delta, bias)

    def validate(self, weight_shape) -> str | None:
        for rows, adapter in self.pieces:
            start, stop = self._span(rows)
            fault = adapter.validate((stop - start, *tuple(weight_shape)[1:]))
            if fault:
                return fault
        return None
