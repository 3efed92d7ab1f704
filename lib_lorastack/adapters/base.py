"""The common interface of every adapter algorithm (LoRA, LoHa, LoKr, OFT, …).

One ``Adapter`` holds the tensors of one LoRA module (one target) and computes that target's change.

Additive adapters (``additive = True``: LoRA/LoCon, LoHa, LoKr, full/diff, norm) give a ΔW that does
not depend on the weight it is applied to; the stack sums ``strength_i · ΔW_i``.
Multiplicative adapters (``additive = False``: DoRA, IA3, OFT, BOFT, GLoRA) give ``W' − W`` for the
weight they are handed; the stack applies them in stack order on top of the summed additive change,
each at strength m as ``W ← W + m · (W'(W) − W)`` (the WebUI's linear blend of the difference).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass
class WeightUpdate:
    """A target's change at strength 1: ``weight`` shaped like the target weight, ``bias`` like its bias."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None


class Adapter(ABC):
    """One module of one LoRA file.

    ``tensors`` maps the key suffixes after the module prefix (``lora_up.weight``, ``alpha``,
    ``hada_w1_a``, …) to tensors, as stored in the file (any dtype, CPU).
    """

    algo: ClassVar[str]  # short name shown to users: "lora", "locon", "loha", "lokr", "full", "norm", ...
    additive: ClassVar[bool] = True
    # ``add_to`` runs only tensor operations on the weight's device once ``on_device`` copied the tensors there
    # (no host round trip, no transfer): the engine may capture it in a CUDA graph and replay it with new strengths
    graph_safe: ClassVar[bool] = False

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = dict(tensors)

    @classmethod
    @abstractmethod
    def accepts(cls, suffixes: frozenset[str]) -> bool:
        """Whether this algorithm owns a module with these key suffixes."""

    @property
    def label(self) -> str:
        """The name shown to users (LoRA on a k×k conv shows as LoCon)."""
        return self.algo

    @property
    def rank(self) -> int | None:
        """The rank (``dim``) when the algorithm has one."""
        return None

    @property
    def alpha(self) -> float | None:
        return None

    @property
    def scale(self) -> float:
        """The file's own scale: ``alpha / rank`` where both are known, else 1 (as the WebUI)."""
        return 1.0

    @abstractmethod
    def update(
        self, weight: torch.Tensor, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> WeightUpdate:
        """The change at strength 1 for a target whose current weight is ``weight``.

        Computed in ``dtype`` (fp32 by default) on ``device`` (default: the weight's device).
        Additive adapters use ``weight`` only for its shape; multiplicative ones return ``W' − W``.
        """

    def add_to(self, weight: torch.Tensor, strength: torch.Tensor) -> torch.Tensor | None:
        """Add ``strength · change`` into ``weight`` in place (its dtype and device: the engine's fp32 value) and
        return the bias change at that strength, or None. ``strength`` is a one-element tensor on the weight's device
        (so a CUDA graph of this call replays with new strengths). Additive adapters add ``strength · ΔW``;
        multiplicative ones ``strength · (W'(weight) − weight)``. Subclasses fold the strength into a small factor
        and write the weight in one pass where their math allows."""
        update = self.update(weight, dtype=weight.dtype, device=weight.device)
        weight.addcmul_(update.weight.reshape(weight.shape), strength)
        return None if update.bias is None else update.bias * strength

    def on_device(self, device: torch.device | str) -> Adapter:
        """A copy whose factor tensors live on ``device`` (scalars such as ``alpha`` stay on the CPU, so reading
        them needs no device round trip)."""
        moved = copy.copy(self)
        moved.tensors = {k: v.to(device) if v.numel() > 1 else v for k, v in self.tensors.items()}
        return moved

    def device_nbytes(self) -> int:
        """Bytes ``on_device`` puts on a device."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values() if t.numel() > 1)

    def low_rank_factors(
        self, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(up [out, r], down [r, fan_in])`` with ``scale`` folded into ``up``, such that
        ``ΔW == (up @ down).reshape(weight.shape)``; ``None`` when the change is not such a product
        (the engine then calls ``update``). Lets the engine batch many layers into one matmul."""
        return None

    def low_rank_native(self, *, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """``(up [out, r], down [r, fan_in], scale)`` in the file's own dtype on ``device``, with
        ``ΔW == scale · up @ down``; ``None`` when the change is not such a product. The engine keeps these on the
        device and concatenates them per weight (the file's dtype tells whether the products can run exactly on
        half-precision matrix units)."""
        return None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def validate(self, weight_shape: torch.Size | tuple[int, ...]) -> str | None:
        """A message naming the fault when the tensors cannot apply to a weight of this shape, else None."""
        return None

    def check(self, weight_shape: torch.Size | tuple[int, ...]) -> str | None:
        """``validate``, remembered per shape (the engine asks on every apply)."""
        memo = self.__dict__.setdefault("_checked", {})
        key = tuple(weight_shape)
        if key not in memo:
            memo[key] = self.validate(key)
        return memo[key]


class RankScaled(Adapter):
    """Algorithms scaled by the file's ``scale``, else ``alpha / rank`` (1 when either is unknown)."""

    @property
    def alpha(self) -> float | None:
        t = self.tensors.get("alpha")
        return float(t.detach().float().reshape(-1)[0]) if t is not None and t.numel() else None

    @property
    def scale(self) -> float:
        if "scale" in self.tensors:
            return float(self.tensors["scale"].detach().float().reshape(-1)[0])
        rank, alpha = self.rank, self.alpha
        return alpha / rank if rank and alpha is not None else 1.0

    def validate(self, weight_shape) -> str | None:
        """Dry run on the meta device: the factors fit the layer iff the change can be computed."""
        try:
            self.update(torch.empty(weight_shape, device="meta"), device="meta")
        except RuntimeError as e:
            return f"{self.label} factors do not fit a layer of shape {tuple(weight_shape)}: {e}"
        return None
