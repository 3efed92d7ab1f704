"""What a stack asks of each parameter: the contributions (adapter × strength) and a signature to diff on."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..adapters.base import Adapter
from ..formats.lora import ParsedLora
from ..formats.targets import Target

FUSED = "fused"
ONLINE = "online"


@dataclass(frozen=True)
class StackLayer:
    """One LoRA of a stack. ``block_weight`` maps a module name to its block multiplier (None: 1 everywhere).

    ``start``/``stop`` follow lora-block-weight: the LoRA is active at step s when ``start <= s`` (if set) and
    ``s < stop`` (if set).
    """

    lora: ParsedLora
    te: float = 1.0
    unet: float = 1.0
    block_weight: Callable[[str], float] | None = None
    start: int | None = None
    stop: int | None = None

    def active_at(self, step: int | None) -> bool:
        if step is None:
            return True
        return (self.start is None or step >= self.start) and (self.stop is None or step < self.stop)

    def strength_for(self, target: Target) -> float:
        base = self.te if target.component.is_text_encoder else self.unet
        return base * (self.block_weight(target.module) if self.block_weight is not None else 1.0)


@dataclass(frozen=True)
class Contribution:
    """One adapter's part in one parameter: the rows it covers (None = all) and its strength."""

    order: int  # position of the LoRA in the stack
    lora: ParsedLora
    target: Target
    adapter: Adapter
    strength: float

    @property
    def key(self) -> tuple:
        return (self.lora.identity, str(self.target), self.strength, self.adapter.additive, self.order)


ParamKey = tuple[str, str]  # (module name, parameter name)


@dataclass
class ParamPlan:
    """Everything a parameter must become: its contributions and the mode they are applied in."""

    key: ParamKey
    mode: str
    contributions: list[Contribution]

    @property
    def signature(self) -> tuple:
        additive = sorted(
            (c.key[:3] for c in self.contributions if c.adapter.additive), key=lambda k: (str(k[0]), k[1], k[2])
        )
        ordered = [c.key[:3] for c in self.contributions if not c.adapter.additive]  # order matters for these
        return (self.mode, tuple(additive), tuple(ordered))


@dataclass(frozen=True)
class Skipped:
    lora: str
    target: str
    reason: str


def build_plan(
    stack: Sequence[StackLayer],
    step: int | None,
    modules: Mapping[str, torch.nn.Module],
    choose_mode: Callable[[torch.nn.Module, str], str],
) -> tuple[dict[ParamKey, ParamPlan], list[Skipped]]:
    plans: dict[ParamKey, ParamPlan] = {}
    skipped: list[Skipped] = []
    for order, layer in enumerate(stack):
        if not layer.active_at(step):
            continue
        for target, adapter in layer.lora.modules.items():
            module = modules.get(target.module)
            param = getattr(module, target.param, None) if module is not None else None
            if not isinstance(param, torch.Tensor):
                skipped.append(Skipped(layer.lora.name, str(target), "the model has no such layer"))
                continue
            shape = _target_shape(param, target)
            if shape is None:
                skipped.append(Skipped(layer.lora.name, str(target), f"rows {target.rows} outside {tuple(param.shape)}"))
                continue
            fault = adapter.check(shape)
            if fault:
                skipped.append(Skipped(layer.lora.name, str(target), fault))
                continue
            strength = layer.strength_for(target)
            if strength == 0.0:
                continue
            key = (target.module, target.param)
            plan = plans.get(key)
            if plan is None:
                plan = plans[key] = ParamPlan(key, choose_mode(module, target.param), [])
            plan.contributions.append(Contribution(order, layer.lora, target, adapter, strength))
    return plans, skipped


def _target_shape(param: torch.Tensor, target: Target) -> tuple[int, ...] | None:
    if target.rows is None:
        return tuple(param.shape)
    start, stop = target.rows
    if not 0 <= start < stop <= param.shape[0]:
        return None
    return (stop - start, *param.shape[1:])
