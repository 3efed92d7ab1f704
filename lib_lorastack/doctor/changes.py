"""A stack, target by target: which LoRAs change each parameter, at which strength, and their ΔW on demand."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch

from ..adapters.base import Adapter
from ..formats.model_tables import load_table
from ..formats.targets import Family, Target
from ..syntax.blocks import block_id
from .fused_rows import RowsAdapter
from .stack import StackItem

OTHER = "OTHER"  # modules outside every LBW block (time_embed, out, label_emb): no block weight reaches them


@dataclass(frozen=True)
class Part:
    """One LoRA's change of one target: ``strength`` × the adapter's ΔW."""

    index: int  # position of the LoRA in the stack
    strength: float
    adapter: Adapter

    @property
    def additive(self) -> bool:
        return self.adapter.additive

    @property
    def stored_dtype(self) -> torch.dtype:
        """The dtype the file stores the factors in (reading them in it costs no conversion)."""
        return next((t.dtype for t in self.adapter.tensors.values() if t.is_floating_point()), torch.float32)

    def factors(self, dtype: torch.dtype, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(up, down)`` with the file's scale in ``up`` (strength not applied), or None when not low-rank."""
        if not self.adapter.additive:
            return None
        return self.adapter.low_rank_factors(dtype=dtype, device=device)

    def unit_change(
        self, shape: tuple[int, ...], *, w0: torch.Tensor | None = None, dtype=torch.float32, device="cpu"
    ) -> torch.Tensor:
        """ΔW at strength 1, shaped ``[out, fan_in]`` (1-D norm weights as ``[n, 1]``). Multiplicative adapters
        need the base value ``w0``: their change is ``W'(W0) − W0``."""
        pair = self.factors(dtype, device)
        if pair is not None:
            return pair[0] @ pair[1]
        if self.adapter.additive:
            weight = torch.empty(shape, device="meta")
        elif w0 is None:
            raise ValueError(f"{self.adapter.label} changes depend on the base weight; none given")
        else:
            weight = w0.reshape(shape).to(device=device, dtype=dtype)
        delta = self.adapter.update(weight, dtype=dtype, device=device).weight
        return delta.reshape(shape[0], -1)


@dataclass
class TargetChange:
    target: Target
    block: str
    shape: tuple[int, ...]
    parts: list[Part]

    @property
    def shape2d(self) -> tuple[int, int]:
        fan_in = 1
        for s in self.shape[1:]:
            fan_in *= int(s)
        return int(self.shape[0]), fan_in

    @property
    def needs_base(self) -> bool:
        return any(not p.additive for p in self.parts)

    def dense(self, *, w0: torch.Tensor | None = None, dtype=torch.float32, device="cpu") -> torch.Tensor:
        """Σ strength·ΔW of the additive parts (``[out, fan_in]``)."""
        total = torch.zeros(self.shape2d, dtype=dtype, device=device)
        for p in self.parts:
            total.add_(p.unit_change(self.shape, w0=w0, dtype=dtype, device=device), alpha=p.strength)
        return total


@cache
def _module_order(family: Family) -> dict[str, int]:
    return {name: i for i, name in enumerate(load_table(family).modules)}


def target_order(family: Family):
    order = _module_order(Family(family))
    return lambda t: (order.get(t.module, len(order)), t.param, t.rows or (0, 0))


def _whole_weights(lora_modules: dict[Target, Adapter], table) -> dict[Target, Adapter]:
    """Flux: one LoRA's changes of row slices of a fused weight (q/k/v of ``img_attn.qkv``, q/k/v/mlp of
    ``linear1``) as one change of the whole weight (``fused_rows``), the unit Forge patches and kohya stores."""
    sliced = {t.module for t in lora_modules if t.rows is not None}
    if not sliced:
        return lora_modules
    out: dict[Target, Adapter] = {}
    groups: dict[Target, list[tuple[tuple[int, int] | None, Adapter]]] = {}
    for target, adapter in lora_modules.items():
        if target.module in sliced:
            groups.setdefault(Target(target.module, target.param), []).append((target.rows, adapter))
        else:
            out[target] = adapter
    for whole, pieces in groups.items():
        shape = table.shape_of(whole)
        if shape is None:
            continue  # the loader checked every target against the same table
        out[whole] = RowsAdapter(sorted(pieces, key=lambda p: p[0] or (0, 0)), shape[0])
    return out


def collect_changes(items: Sequence[StackItem], family: Family | str) -> list[TargetChange]:
    """Every target the stack changes (strength ≠ 0), in model order, with each LoRA's part. On Flux, a LoRA's
    changes of parts of a fused weight are one change of that weight (``fused_rows.RowsAdapter``)."""
    family = Family(family)
    table = load_table(family)
    by_target: dict[Target, TargetChange] = {}
    for index, item in enumerate(items):
        modules = _whole_weights(item.lora.modules, table) if family is Family.FLUX else item.lora.modules
        for target, adapter in modules.items():
            strength = item.strength_for(target)
            if strength == 0.0:
                continue
            change = by_target.get(target)
            if change is None:
                shape = table.shape_of(target)
                if shape is None:
                    continue  # the loader checked every target against the same table
                change = by_target[target] = TargetChange(target, block_id(target.module) or OTHER, tuple(shape), [])
            change.parts.append(Part(index, strength, adapter))
    return [by_target[t] for t in sorted(by_target, key=target_order(family))]
