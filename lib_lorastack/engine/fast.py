"""The steady-state switch: the same LoRAs, block weights and schedules, only te/unet strengths changed (fused:
``FastSwitch``; a wholly online stack: ``OnlineSwitch``).

After an apply whose fused writes ran as a CUDA graph, ``FastSwitch`` remembers, for every low-rank contribution in
the graph's scale buffer, which stack layer it comes from, whether it takes the TE or the UNet strength, and its block
factor. A later apply of a stack with the same structure then skips planning entirely: the new strengths are a
gather and a product in float64 (the same doubles planning would compute), the scale buffer one repeat, the write
one graph replay. The engine's per-parameter plans are rebuilt from the stack only when something needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from .batch import WriteBatch
from .fused import MAX_HALF_STRENGTH, SPLIT
from .graphs import EagerReplay, FusedGraph
from .online import OnlineLayer, UpBank, rescale_groups, write_scales
from .plan import BlockMemo, ParamKey, StackLayer


def block_key(fn: Callable[[str], float] | None) -> Hashable:
    if fn is None:
        return None
    owner = getattr(fn, "__self__", None)
    key = (owner, fn.__func__) if owner is not None else fn  # type: ignore[attr-defined]
    try:
        hash(key)
    except TypeError:
        return ("unhashable", id(fn))
    return key


def structure(stack: Sequence[StackLayer], step: int | None) -> tuple:
    """What decides the set of contributions, strengths aside."""
    return tuple(
        (id(layer.lora), float(layer.te) == 0.0, float(layer.unet) == 0.0, block_key(layer.block_weight), layer.active_at(step))
        for layer in stack
    )


@dataclass
class FastSwitch:
    structure: tuple
    graph: FusedGraph
    keys: list[ParamKey]
    params: list[torch.Tensor]
    pointers: list[int]
    layer: torch.Tensor  # long: the stack position of each contribution
    te: torch.Tensor  # long: 1 where it takes the TE strength
    factor: torch.Tensor  # float64: its block factor
    multiplier: torch.Tensor  # float64: 2**exponent on the split path, else 1
    ranks: torch.Tensor  # long
    current: torch.Tensor  # float64: the strengths now in the weights
    half_limit: bool  # an fp16 split program is in the graph: |strength| must stay ≤ MAX_HALF_STRENGTH
    nbytes: int
    owner: torch.Tensor  # long: the position (in ``keys``) of the weight each value belongs to

    @classmethod
    def from_batch(cls, stack: Sequence[StackLayer], step: int | None, batch: WriteBatch, graph: FusedGraph, blocks: BlockMemo) -> FastSwitch:
        layer, te, factor, multiplier, ranks, current, owner = [], [], [], [], [], [], []
        half_limit = False
        for index, w in enumerate(batch.writes):
            program = w.program
            additive = w.plan.canonical()[0]
            scale = 2.0**program.exponent if w.path == SPLIT else 1.0
            half_limit |= w.path == SPLIT and program.half_dtype is torch.float16
            if program.up_t is None:
                continue
            for j, i in enumerate(program.low_rank):
                c = additive[i]
                source = stack[c.order]
                fn = source.block_weight
                layer.append(c.order)
                te.append(1 if c.bound.is_te else 0)
                factor.append(blocks.table(fn)(c.bound.key[0]) if fn is not None else 1.0)
                multiplier.append(scale)
                ranks.append(program.ranks[j])
                current.append(c.strength)
                owner.append(index)
        for index, w in enumerate(batch.writes):  # then one value per adapter computed in full (LoHa, LoKr, DoRA, …), as ``WriteBatch``
            contributions = [*w.plan.canonical()[0], *w.plan.canonical()[1]]
            for i in w.program.rest:
                c = contributions[i]
                fn = stack[c.order].block_weight
                layer.append(c.order)
                te.append(1 if c.bound.is_te else 0)
                factor.append(blocks.table(fn)(c.bound.key[0]) if fn is not None else 1.0)
                multiplier.append(1.0)
                ranks.append(1)
                current.append(c.strength)
                owner.append(index)
        params = [w.param for w in batch.writes]
        return cls(
            structure(stack, step), graph, [w.key for w in batch.writes], params, [p.data_ptr() for p in params],
            torch.tensor(layer, dtype=torch.long), torch.tensor(te, dtype=torch.long),
            torch.tensor(factor, dtype=torch.float64), torch.tensor(multiplier, dtype=torch.float64),
            torch.tensor(ranks, dtype=torch.long), torch.tensor(current, dtype=torch.float64), half_limit,
            sum(p.numel() * p.element_size() for p in params), torch.tensor(owner, dtype=torch.long),
        )

    def strengths(self, stack: Sequence[StackLayer]) -> torch.Tensor:
        base = torch.tensor([[float(layer.unet), float(layer.te)] for layer in stack], dtype=torch.float64)
        return base[self.layer, self.te] * self.factor

    def usable(self, strengths: torch.Tensor) -> bool:
        if self.half_limit and bool((strengths.abs() > MAX_HALF_STRENGTH).any()):
            return False
        return all(p.data_ptr() == ptr for p, ptr in zip(self.params, self.pointers))

    def write(self, strengths: torch.Tensor, compute_dtype: torch.dtype) -> list[int]:
        """Replay with ``strengths``; the positions of the weights written. A CUDA graph rewrites every weight (one
        replay costs less than choosing); the CPU's eager replay only those whose strengths changed."""
        host = torch.repeat_interleave((strengths * self.multiplier).to(compute_dtype), self.ranks)
        if isinstance(self.graph, EagerReplay):
            written = sorted(set(self.owner[strengths != self.current].tolist()))
            self.graph.replay(host, only=set(written))
        else:
            written = list(range(len(self.keys)))
            self.graph.replay(host)
        self.current = strengths
        return written


@dataclass
class OnlineSwitch:
    """The same for a stack that is wholly online: a strength-only change is a float64 gather and one fold of the
    new per-rank scales into the up factors (``online.write_scales``), with no planning and no diffing."""

    structure: tuple
    banks: list[UpBank]
    alone: list[OnlineLayer]
    layers: list[OnlineLayer]  # in the order of the scale values
    layer: torch.Tensor
    te: torch.Tensor
    factor: torch.Tensor
    ranks: torch.Tensor
    current: torch.Tensor

    @classmethod
    def from_layers(cls, stack: Sequence[StackLayer], step: int | None, layers: Sequence[OnlineLayer], blocks: BlockMemo) -> OnlineSwitch | None:
        """None unless every layer's change is its low-rank pair alone at the plan's strengths (no dense part, no
        per-sample scale)."""
        if not layers or any(
            lay.up is None or lay.dense_weight is not None or lay.dense_bias is not None or lay.unit or lay.sample_scale is not None
            for lay in layers
        ):
            return None
        banks, alone = rescale_groups(list(layers))
        order = [lay for bank in banks for lay in bank.layers] + alone
        if len(order) != len(layers):
            return None
        index, te, factor, ranks, current = [], [], [], [], []
        for lay in order:
            additive = lay.plan.canonical()[0]
            for j, i in enumerate(lay.low_rank):
                c = additive[i]
                fn = stack[c.order].block_weight
                index.append(c.order)
                te.append(1 if c.bound.is_te else 0)
                factor.append(blocks.table(fn)(c.bound.key[0]) if fn is not None else 1.0)
                ranks.append(lay.ranks[j])
                current.append(c.strength)
        return cls(
            structure(stack, step), banks, alone, order, torch.tensor(index, dtype=torch.long), torch.tensor(te, dtype=torch.long),
            torch.tensor(factor, dtype=torch.float64), torch.tensor(ranks, dtype=torch.long), torch.tensor(current, dtype=torch.float64),
        )

    def strengths(self, stack: Sequence[StackLayer]) -> torch.Tensor:
        base = torch.tensor([[float(layer.unet), float(layer.te)] for layer in stack], dtype=torch.float64)
        return base[self.layer, self.te] * self.factor

    def write(self, strengths: torch.Tensor, compute_dtype: torch.dtype) -> None:
        write_scales(self.banks, self.alone, torch.repeat_interleave(strengths.to(compute_dtype), self.ranks))
        self.current = strengths
