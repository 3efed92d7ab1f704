"""What a stack asks of each parameter: the contributions (adapter × strength) and the signatures to diff on.

Planning runs on every apply, so the per-LoRA work that does not depend on strengths (finding each target's
module and checking its shape) is done once per LoRA and model (``Binder``), and block weights are looked up once
per block-weight spec and module (``BlockMemo``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..adapters.base import Adapter
from ..formats.lora import ParsedLora
from ..formats.targets import Target
from ..schedule import schedule_active
from .packed import logical_shape, packed_fault

FUSED = "fused"
ONLINE = "online"

ParamKey = tuple[str, str]  # (module name, parameter name)


@dataclass(frozen=True)
class StackLayer:
    """One LoRA of a stack. ``block_weight`` maps a module name to its block multiplier (None: 1 everywhere).

    ``start``/``stop`` follow lora-block-weight: the LoRA's UNet part is active at step s when ``start <= s`` (if
    set) and ``s < stop`` (if set). Its text-encoder part always applies (the conditioning is computed once).
    """

    lora: ParsedLora
    te: float = 1.0
    unet: float = 1.0
    block_weight: Callable[[str], float] | None = None
    start: int | None = None
    stop: int | None = None

    def active_at(self, step: int | None) -> bool:
        return schedule_active(self.start, self.stop, step)

    def strength_for(self, target: Target) -> float:
        base = self.te if target.component.is_text_encoder else self.unet
        return base * (self.block_weight(target.module) if self.block_weight is not None else 1.0)


class Bound(NamedTuple):
    """One target of one LoRA, resolved against the model (done once per LoRA and model)."""

    key: ParamKey
    target: Target
    adapter: Adapter
    is_te: bool
    ident: tuple[str, str]  # (LoRA identity, target) as text: identity and fixed sort order of additive changes


class Contribution(NamedTuple):
    """One adapter's part in one parameter at one strength."""

    order: int  # position of the LoRA in the stack
    lora: ParsedLora
    bound: Bound
    strength: float

    @property
    def target(self) -> Target:
        return self.bound.target

    @property
    def adapter(self) -> Adapter:
        return self.bound.adapter

    @property
    def key(self) -> tuple:
        return (self.lora.identity, str(self.bound.target), self.strength, self.bound.adapter.additive, self.order)


class ParamPlan:
    """Everything a parameter must become: its contributions and the mode they are applied in."""

    __slots__ = ("_canonical", "_signature", "contributions", "key", "mode")

    def __init__(self, key: ParamKey, mode: str, contributions: list[Contribution] | None = None) -> None:
        self.key = key
        self.mode = mode
        self.contributions: list[Contribution] = contributions if contributions is not None else []
        self._canonical: tuple[list[Contribution], list[Contribution]] | None = None
        self._signature: tuple | None = None

    def canonical(self) -> tuple[list[Contribution], list[Contribution]]:
        """Additive contributions in a fixed order (they commute; a fixed order keeps results bit-stable),
        multiplicative ones in stack order."""
        if self._canonical is None:
            self.seal()
        assert self._canonical is not None
        return self._canonical

    @property
    def composition(self) -> tuple:
        """What the parameter is made of, strengths aside: equal compositions share factors and programs."""
        return self.signature[:3]

    @property
    def strengths(self) -> tuple[float, ...]:
        return self.signature[3]

    @property
    def signature(self) -> tuple:
        """``(mode, additive idents, multiplicative idents, strengths)``: equal signatures give equal bits."""
        if self._signature is None:
            self.seal()
        assert self._signature is not None
        return self._signature

    def seal(self, shapes: dict | None = None) -> None:
        """Compute the canonical order and the signature. ``shapes`` caches both per sequence of targets, so a
        stack whose structure did not change costs a dictionary look-up per parameter."""
        cs = self.contributions
        shape_key = (self.mode, *[id(c.bound) for c in cs], *[c.order for c in cs])
        shape = shapes.get(shape_key) if shapes is not None else None
        if shape is None:
            add = sorted((i for i, c in enumerate(cs) if c.bound.adapter.additive), key=lambda i: (cs[i].bound.ident, cs[i].order))
            mul = sorted((i for i, c in enumerate(cs) if not c.bound.adapter.additive), key=lambda i: cs[i].order)
            shape = (add, mul, (self.mode, tuple(cs[i].bound.ident for i in add), tuple(cs[i].bound.ident for i in mul)))
            if shapes is not None:
                shapes[shape_key] = shape
        add, mul, composition = shape
        additive = [cs[i] for i in add]
        multiplicative = [cs[i] for i in mul]
        self._canonical = (additive, multiplicative)
        self._signature = (*composition, tuple(c.strength for c in additive) + tuple(c.strength for c in multiplicative))


@dataclass(frozen=True)
class Skipped:
    lora: str
    target: str
    reason: str


class Binder:
    """Each LoRA's targets resolved against the model's modules, with their shape checks, kept per LoRA."""

    def __init__(self, modules: Mapping[str, torch.nn.Module], capacity: int = 256) -> None:
        self.modules = modules
        self.capacity = capacity
        self._items: OrderedDict[int, tuple[ParsedLora, list[Bound], list[Skipped]]] = OrderedDict()
        self.modes: dict[Callable, dict[ParamKey, str]] = {}  # per mode rule: the mode of each parameter
        self.shapes: dict[tuple, tuple] = {}  # canonical orders by sequence of targets (see ``ParamPlan.seal``)

    def bind(self, lora: ParsedLora) -> tuple[list[Bound], list[Skipped]]:
        item = self._items.get(id(lora))
        if item is not None and item[0] is lora:
            self._items.move_to_end(id(lora))
            return item[1], item[2]
        bound, skipped = self._bind(lora)
        self._items[id(lora)] = (lora, bound, skipped)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
            self.shapes.clear()  # keyed by ids of Bound objects that may now be freed
        if len(self.shapes) > 1 << 16:
            self.shapes.clear()
        return bound, skipped

    def forget(self) -> None:
        self._items.clear()
        self.modes.clear()
        self.shapes.clear()

    def _bind(self, lora: ParsedLora) -> tuple[list[Bound], list[Skipped]]:
        bound: list[Bound] = []
        skipped: list[Skipped] = []
        identity = str(lora.identity)
        for target, adapter in lora.modules.items():
            module = self.modules.get(target.module)
            param = getattr(module, target.param, None) if module is not None else None
            if not isinstance(param, torch.Tensor):
                skipped.append(Skipped(lora.name, str(target), "the model has no such layer"))
                continue
            shape = _target_shape(param, target)
            if shape is None:
                skipped.append(Skipped(lora.name, str(target), f"rows {target.rows} outside {tuple(param.shape)}"))
                continue
            fault = adapter.check(shape) or packed_fault(module, target.param, adapter)
            if fault:
                skipped.append(Skipped(lora.name, str(target), fault))
                continue
            is_te = target.component.is_text_encoder
            bound.append(Bound((target.module, target.param), target, adapter, is_te, (identity, str(target))))
        return bound, skipped


class BlockMemo:
    """Block multipliers by (block-weight spec, module). A spec that is a bound method of a hashable value (as
    ``BlockWeights.weight_for``) is recognised by that value, so re-resolving the same spec costs nothing."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, dict[str, float]] = OrderedDict()

    def table(self, fn: Callable[[str], float]) -> Callable[[str], float]:
        owner = getattr(fn, "__self__", None)
        key: Hashable
        try:
            key = (owner, fn.__func__) if owner is not None else fn  # type: ignore[attr-defined]
            hash(key)
        except TypeError:
            return fn
        memo = self._items.get(key)
        if memo is None:
            memo = self._items[key] = {}
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

        def lookup(module: str) -> float:
            value = memo.get(module)
            if value is None:
                value = memo[module] = float(fn(module))
            return value

        return lookup


def build_plan(
    stack: Sequence[StackLayer],
    step: int | None,
    binder: Binder,
    choose_mode: Callable[[torch.nn.Module, str], str],
    blocks: BlockMemo | None = None,
) -> tuple[dict[ParamKey, ParamPlan], list[Skipped]]:
    plans: dict[ParamKey, ParamPlan] = {}
    skipped: list[Skipped] = []
    modes = binder.modes.setdefault(choose_mode, {})
    for order, layer in enumerate(stack):
        unet_active = layer.active_at(step)  # schedules gate the UNet: the text encoder runs once, before step 0
        bound, faults = binder.bind(layer.lora)
        skipped += faults
        te, unet = float(layer.te), float(layer.unet)
        weight = None
        if layer.block_weight is not None:
            weight = blocks.table(layer.block_weight) if blocks is not None else layer.block_weight
        for b in bound:
            if not (b.is_te or unet_active):
                continue
            strength = te if b.is_te else unet
            if weight is not None:
                strength *= weight(b.key[0])
            if strength == 0.0:
                continue
            plan = plans.get(b.key)
            if plan is None:
                mode = modes.get(b.key)
                if mode is None:
                    mode = modes[b.key] = choose_mode(binder.modules[b.key[0]], b.key[1])
                plan = plans[b.key] = ParamPlan(b.key, mode)
            plan.contributions.append(Contribution(order, layer.lora, b, strength))
    for plan in plans.values():
        plan.seal(binder.shapes)
    return plans, skipped


def _target_shape(param: torch.Tensor, target: Target) -> tuple[int, ...] | None:
    shape = logical_shape(param)  # a packed weight's own shape may be that of its bytes
    if target.rows is None:
        return tuple(shape)
    start, stop = target.rows
    if not 0 <= start < stop <= shape[0]:
        return None
    return (stop - start, *shape[1:])
