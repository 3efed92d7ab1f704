"""Putting the model back when an apply fails: every parameter the call touched returns to its state before the
call, bit for bit, through the same per-weight function that wrote it (``PatchEngine.write_one``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .plan import FUSED, ParamKey, ParamPlan

if TYPE_CHECKING:
    from .engine import PatchEngine


@dataclass
class Transaction:
    old: dict[ParamKey, ParamPlan]  # the patched state before the call
    done: list[ParamKey] = field(default_factory=list)  # parameters this call changed, in order
    pending_drops: list[ParamKey] = field(default_factory=list)  # backups to free once the call succeeds

    def rollback(self, engine: PatchEngine) -> None:
        engine._fail_after_writes = None
        for key in dict.fromkeys(reversed(self.done)):
            engine._drop_online(key[0])
            before = self.old.get(key)
            if key in engine.backups:
                engine._restore(key, None, keep_backup=before is not None and before.mode == FUSED)
            engine._applied.pop(key, None)
            if before is None:
                continue
            if before.mode == FUSED:
                bias = engine.write_one(key, before)
                if bias is not None:
                    engine._write_bias(key, bias, None)
                engine._applied[key] = before
            else:
                engine._rebuild_online(key, before)
        for key, plan in self.old.items():  # untouched entries stay as they were
            engine._applied.setdefault(key, plan)


def tag(exc: BaseException, plan: ParamPlan) -> None:
    """Remember on ``exc`` which LoRA(s) and which layer it happened in (the first place wins)."""
    if not hasattr(exc, "_lorastack_where"):
        names = sorted({c.lora.name for c in plan.contributions})
        with contextlib.suppress(AttributeError):  # some builtin exceptions take no attributes
            exc._lorastack_where = (", ".join(names), f"{plan.key[0]}.{plan.key[1]}")  # type: ignore[attr-defined]
