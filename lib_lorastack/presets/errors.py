"""Errors of the preset store. Each message names the preset, the file or the field, and the fault."""

from __future__ import annotations

from pathlib import Path

from ..errors import LoraStackError


class PresetError(LoraStackError):
    """Base of every preset error; ``str(error)`` is a message fit to show the user."""


class PresetNameError(PresetError):
    """A preset (or block preset) name that cannot be used."""


class PresetSchemaError(PresetError):
    """Data that does not follow the preset schema. ``where`` names the preset and field, ``fault`` the problem."""

    def __init__(self, where: str, fault: str) -> None:
        self.where = where
        self.fault = fault
        super().__init__(f"{where}: {fault}" if where else fault)


class PresetNotFoundError(PresetError):
    def __init__(self, name: str, suggestions: list[str] | None = None) -> None:
        self.name = name
        self.suggestions = list(suggestions or [])
        hint = f" (did you mean {', '.join(repr(s) for s in self.suggestions)}?)" if self.suggestions else ""
        super().__init__(f"no preset named {name!r}{hint}")


class PresetConflictError(PresetError):
    """Saving or importing would replace presets the caller did not ask to replace."""

    def __init__(self, names: list[str], message: str) -> None:
        self.names = list(names)
        super().__init__(message)


class PresetFileError(PresetError):
    """The store file cannot be read (corrupt, hand-broken, newer schema, too big). Nothing is written while it
    stands. ``backup`` is the path of a usable backup, or None."""

    def __init__(self, path: str | Path, fault: str, *, backup: Path | None = None, newer_schema: bool = False) -> None:
        self.path = str(path)
        self.fault = fault
        self.backup = backup
        self.newer_schema = newer_schema
        if newer_schema:
            advice = "update lorastack to use it; the file is left untouched"
        elif backup is not None:
            advice = f"the previous version is kept in {backup}: restore it, or reset the store (the broken file is kept aside)"
        else:
            advice = "fix it by hand or reset the store (the broken file is kept aside)"
        super().__init__(f"preset file {self.path}: {fault}; {advice}")


class PresetLockTimeout(PresetError):
    def __init__(self, path: str | Path, seconds: float) -> None:
        self.path = str(path)
        super().__init__(f"preset file {self.path} is locked by another process; gave up after {seconds:g} s")


class PresetImportError(PresetError):
    """A file offered for import cannot be used; nothing of it is imported. ``source`` names the file."""

    def __init__(self, source: str, fault: str) -> None:
        self.source = source
        self.fault = fault
        super().__init__(f"{source}: {fault}; nothing was imported")
