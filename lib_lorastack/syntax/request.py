"""The stack request: what a prompt (or the panel, or a preset) asks for. Immutable; exchanged by every part."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..schedule import schedule_active

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Diagnostic:
    """A precise message about the user's text. ``span`` is ``(start, end)`` in the text named by ``source``."""

    kind: str  # bad-number, no-name, legacy-preset, negative-prompt, duplicate, unknown-argument, …
    severity: Severity
    message: str
    span: tuple[int, int]
    source: Literal["prompt", "negative"] = "prompt"


@dataclass(frozen=True)
class StackEntry:
    """One LoRA of the stack, as asked for.

    ``te``/``unet``: strengths. ``dyn``: DyLoRA rank. ``lbw``: block-weight spec as typed (a preset name or a
    comma vector; resolved later for the LoRA's family, see ``lbw.resolve_block_weights``); ``lbwe``: an
    elemental preset name; ``x``: the value that ``X`` stands for in vectors. ``start``/``stop``: active for
    steps ``start <= s < stop``. ``span``/``tag`` say where it came from and are not part of equality.
    """

    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None
    lbw: str | None = None
    lbwe: str | None = None
    x: float | None = None
    start: int | None = None
    stop: int | None = None
    span: tuple[int, int] | None = field(default=None, compare=False)
    tag: str = field(default="lora", compare=False)

    def active_at(self, step: int | None) -> bool:
        return schedule_active(self.start, self.stop, step)


@dataclass(frozen=True)
class StackRequest:
    """Entries in stack order, plus every diagnostic. ``prompt`` is the text with the tags removed (what the text
    encoder sees). Equality compares the entries only."""

    entries: tuple[StackEntry, ...] = ()
    diagnostics: tuple[Diagnostic, ...] = field(default=(), compare=False)
    prompt: str = field(default="", compare=False)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")

    def names(self) -> list[str]:
        return [e.name for e in self.entries]
