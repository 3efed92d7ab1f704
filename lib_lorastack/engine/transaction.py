"""Putting the model back when an apply fails: every parameter the call touched returns to its state before the
call, bit for bit, through the same per-weight function that wrote it (``PatchEngine.write_one``)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .plan import ParamKey, ParamPlan


class Rollbackable(Protocol):
    """What a transaction needs from the engine it undoes."""

    def put_back(self, key: ParamKey, before: ParamPlan | None) -> None:
        """Give ``key`` the state ``before`` (None: pristine) through the engine's own write paths."""

    def keep_untouched(self, old: Mapping[ParamKey, ParamPlan]) -> None:
        """Entries of ``old`` that the failed call never reached stay as they were."""


@dataclass
class Transaction:
    old: dict[ParamKey, ParamPlan]  # the patched state before the call
    done: list[ParamKey] = field(default_factory=list)  # parameters this call changed, in order
    pending_drops: list[ParamKey] = field(default_factory=list)  # backups to free once the call succeeds
    pending_swaps: list[ParamKey] = field(default_factory=list)  # restored by taking over their backup at the end

    def rollback(self, engine: Rollbackable) -> None:
        """Every parameter this call changed back to its state before the call, last changed first."""
        for key in dict.fromkeys(reversed(self.done)):
            engine.put_back(key, self.old.get(key))
        engine.keep_untouched(self.old)


def tag(exc: BaseException, plan: ParamPlan) -> None:
    """Remember on ``exc`` which LoRA(s) and which layer it happened in (the first place wins)."""
    if not hasattr(exc, "_lorastack_where"):
        names = sorted({c.lora.name for c in plan.contributions})
        with contextlib.suppress(AttributeError):  # some builtin exceptions take no attributes
            exc._lorastack_where = (", ".join(names), f"{plan.key[0]}.{plan.key[1]}")  # type: ignore[attr-defined]
