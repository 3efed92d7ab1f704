"""BOFT: butterfly OFT. ``oft_blocks [m, n, b, b]`` are m stages of block rotations; stage i mixes rows
2^i·b/2 apart, so the product of the stages is a dense orthogonal matrix. Optional ``rescale`` per row."""

from __future__ import annotations

from typing import ClassVar

import torch

from ._common import scalar
from .base import Adapter, WeightUpdate
from .oft import cayley


def _butterfly_rows(x: torch.Tensor, half_block: int, stage: int) -> torch.Tensor:
    """Reorder the rows so that rows ``2^stage · half_block`` apart become neighbours (and back: it is an involution
    only with its inverse below)."""
    stride = (2**stage) * half_block
    return x.unflatten(0, (-1, 2, stride)).transpose(1, 2).flatten(0, 2)


def _unbutterfly_rows(x: torch.Tensor, half_block: int, stage: int) -> torch.Tensor:
    stride = (2**stage) * half_block
    return x.unflatten(0, (-1, stride, 2)).transpose(1, 2).flatten(0, 2)


class BOFT(Adapter):
    algo: ClassVar[str] = "boft"
    additive: ClassVar[bool] = False

    @classmethod
    def accepts(cls, suffixes: frozenset[str]) -> bool:
        return "oft_blocks" in suffixes and suffixes <= {"oft_blocks", "alpha", "rescale"}

    @property
    def alpha(self) -> float | None:
        return scalar(self.tensors.get("alpha"))

    @property
    def rank(self) -> int:
        return int(self.tensors["oft_blocks"].shape[-1])

    def update(self, weight: torch.Tensor, *, dtype=torch.float32, device=None) -> WeightUpdate:
        device = weight.device if device is None else device
        base = weight.to(device=device, dtype=dtype)
        blocks = self.tensors["oft_blocks"].to(device=device, dtype=dtype)
        stages, _, b, _ = blocks.shape
        rotations = cayley(blocks, (self.alpha or 0.0) * base.shape[0])
        x = base
        for i in range(stages):
            x = _butterfly_rows(x, b // 2, i).unflatten(0, (-1, b))
            x = torch.einsum("kij,kj...->ki...", rotations[i], x).flatten(0, 1)
            x = _unbutterfly_rows(x, b // 2, i)
        rescale = self.tensors.get("rescale")
        if rescale is not None:
            x = x * rescale.to(device=device, dtype=dtype).reshape(-1, *([1] * (base.dim() - 1)))
        return WeightUpdate(x - base)

    def validate(self, weight_shape) -> str | None:
        blocks = self.tensors["oft_blocks"]
        if blocks.dim() != 4 or blocks.shape[-1] != blocks.shape[-2]:
            return f"BOFT blocks {tuple(blocks.shape)} must be [m, n, b, b]"
        if blocks.shape[1] * blocks.shape[2] != weight_shape[0]:
            return f"BOFT blocks {tuple(blocks.shape)} do not cover the {weight_shape[0]} outputs of the layer"
        return None
