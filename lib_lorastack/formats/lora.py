"""A LoRA file as the rest of the package sees it: its adapters by target, and what did not map."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ..adapters.base import Adapter
from .targets import Family, Target

_serial = itertools.count(1)


@dataclass(frozen=True)
class UnmatchedKey:
    """A key (or module prefix) of the file that changes nothing, and why."""

    key: str
    reason: str


@dataclass(eq=False)
class ParsedLora:
    """One LoRA, mapped onto a model family's modules.

    ``modules``: every target it changes → the adapter that computes the change. ``identity`` is what
    caches key on: the file's path, size and mtime when read from disk, else a serial number.
    """

    name: str
    modules: dict[Target, Adapter]
    path: str | None = None
    alias: str | None = None
    family: Family | None = None
    format: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    unmatched: list[UnmatchedKey] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    identity: tuple = field(default_factory=lambda: ("memory", next(_serial)))

    def __repr__(self) -> str:
        return f"ParsedLora({self.name!r}, {len(self.modules)} modules, family={self.family})"
