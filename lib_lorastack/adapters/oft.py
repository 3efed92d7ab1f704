"""OFT: a block-diagonal orthogonal rotation of the output rows, W' = R_blockᵀ · W (· rescale).

R = (I + Q)(I − Q)⁻¹ (Cayley) with Q = B − Bᵀ, ‖Q‖ clipped to ``alpha · out`` when alpha > 0 (the
LyCORIS/kohya constraint). Old LyCORIS files store the rotation itself as ``oft_diag``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ._common import scalar
from .base import Adapter, WeightUpdate


def cayley(blocks: torch.Tensor, constraint: float) -> torch.Tensor:
    """Orthogonal matrices from the skew-symmetric part of ``blocks`` ([…, b, b])."""
    q = blocks - blocks.transpose(-1, -2)
    if constraint > 0:
        norm = torch.linalg.norm(q) + 1e-8
        if norm > constraint:
            q = q * (constraint / norm)
    eye = torch.eye(blocks.shape[-1], device=blocks.device, dtype=blocks.dtype)
    return (eye + q) @ torch.linalg.inv(eye - q)


class OFT(Adapter):
    algo: ClassVar[str] = "oft"
    additive: ClassVar[bool] = False

    @classmethod
    def accepts(cls, suffixes: frozenset[str]) -> bool:
        if "oft_blocks" in suffixes:
            return suffixes <= {"oft_blocks", "alpha", "rescale"}
        return "oft_diag" in suffixes and suffixes <= {"oft_diag", "alpha", "rescale"}

    @property
    def blocks(self) -> torch.Tensor:
        return self.tensors.get("oft_blocks", self.tensors.get("oft_diag"))

    @property
    def alpha(self) -> float | None:
        return scalar(self.tensors.get("alpha"))

    @property
    def rank(self) -> int:
        return int(self.blocks.shape[-1])  # block size

    def rotation(self, out_dim: int, dtype, device) -> torch.Tensor:
        blocks = self.blocks.to(device=device, dtype=dtype)
        if "oft_diag" in self.tensors:
            return blocks
        return cayley(blocks, (self.alpha or 0.0) * out_dim)

    def update(self, weight: torch.Tensor, *, dtype=torch.float32, device=None) -> WeightUpdate:
        device = weight.device if device is None else device
        base = weight.to(device=device, dtype=dtype)
        r = self.rotation(base.shape[0], dtype, device)
        n, b, _ = r.shape
        rotated = torch.einsum("knm,kn...->km...", r, base.reshape(n, b, *base.shape[1:])).reshape(base.shape)
        rescale = self.tensors.get("rescale")
        if rescale is not None:
            rotated = rotated * rescale.to(device=device, dtype=dtype).reshape(-1, *([1] * (base.dim() - 1)))
        return WeightUpdate(rotated - base)

    def validate(self, weight_shape) -> str | None:
        blocks = self.blocks
        if blocks.dim() != 3 or blocks.shape[1] != blocks.shape[2]:
            return f"OFT blocks {tuple(blocks.shape)} must be [n, b, b]"
        if blocks.shape[0] * blocks.shape[1] != weight_shape[0]:
            return f"OFT blocks {tuple(blocks.shape)} do not cover the {weight_shape[0]} outputs of the layer"
        return None
