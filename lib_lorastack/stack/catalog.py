"""Finding LoRAs by the name typed in a prompt, as the WebUI does.

Folders are scanned recursively (hidden folders skipped) in natural order; a file is known by its stem (a later
file with the same stem replaces an earlier one) and by its alias (``ss_output_name``). An alias already claimed
when its file is scanned, or the word ``none``, becomes forbidden and then only exact stems match. Lookup is case-sensitive. A miss triggers one
rescan; the result of a failed lookup lists close names.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LoraFileError
from ..formats.files import PICKLE_EXTENSIONS, LoraFile

EXTENSIONS = {".safetensors", *PICKLE_EXTENSIONS}


@dataclass
class CatalogEntry:
    name: str  # the file's stem
    path: Path
    alias: str
    metadata: dict[str, str] = field(default_factory=dict)
    fault: str | None = None  # why the file cannot be used (pickled, corrupt)


def _natural_key(text: str) -> list:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", text)]


class LoraCatalog:
    def __init__(self, *folders: str | Path) -> None:
        self.folders = [Path(f) for f in folders]
        self.entries: dict[str, CatalogEntry] = {}
        self.aliases: dict[str, CatalogEntry] = {}
        self.forbidden_aliases: set[str] = set()
        self.rescan()

    def _files(self) -> list[Path]:
        """Per folder, directories in natural order, then each directory's files in natural order (as the WebUI)."""
        found: list[Path] = []
        for folder in self.folders:
            if not folder.is_dir():
                continue
            walked = [(root, dirs, files) for root, dirs, files in os.walk(folder, followlinks=True)]
            for root, _, files in sorted(walked, key=lambda w: _natural_key(w[0])):
                if any(part.startswith(".") for part in Path(root).relative_to(folder).parts):
                    continue
                for f in sorted(files, key=_natural_key):
                    if Path(f).suffix.lower() in EXTENSIONS:
                        found.append(Path(root) / f)
        return found

    def rescan(self) -> None:
        self.entries.clear()
        self.aliases.clear()
        self.forbidden_aliases = {"none"}
        for path in self._files():
            try:
                f = LoraFile(path)
                entry = CatalogEntry(path.stem, path, f.alias, f.metadata)
            except LoraFileError as e:
                entry = CatalogEntry(path.stem, path, path.stem, fault=e.fault)
            # As the WebUI, in scan order: an alias already known (as a stem or alias) becomes forbidden, and
            # the alias of a file whose stem a later file takes over stays reachable.
            if entry.alias in self.aliases:
                self.forbidden_aliases.add(entry.alias.lower())
            self.entries[entry.name] = entry
            self.aliases[entry.name] = entry
            self.aliases[entry.alias] = entry

    def _lookup(self, name: str) -> CatalogEntry | None:
        if name.lower() in self.forbidden_aliases:
            return self.entries.get(name)
        return self.aliases.get(name)

    def find(self, name: str) -> CatalogEntry | None:
        """The entry for a prompt name, rescanning once on a miss."""
        entry = self._lookup(name)
        if entry is None:
            self.rescan()
            entry = self._lookup(name)
        return entry

    def suggestions(self, name: str, n: int = 3) -> list[str]:
        return difflib.get_close_matches(name, list(self.aliases), n=n, cutoff=0.6)

    def not_found_message(self, name: str) -> str:
        close = self.suggestions(name)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        return f"LoRA not found: {name!r}{hint}"
