"""Finding a preset's LoRA files: by sha256 first (a renamed or moved file still resolves), then by file name
(stem), then by alias, then by the name as typed. The empty file's hash never identifies anything.

Hashing a whole folder is slow the first time, so the file a name points at is hashed first; only when its hash
differs is every file hashed (through ``HashCache``, which the WebUI can back with a file so it happens once).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..formats.hashes import FileHashes, HashCache
from ..stack.catalog import CatalogEntry, LoraCatalog
from .model import EMPTY_SHA256, PresetEntry


@dataclass(frozen=True)
class Resolution:
    """Where one preset row's LoRA is. ``tag_name``: the name to write in ``<lora:…>`` so that the WebUI finds
    this very file (None when not found). ``how``: hash, file, alias, name or None. ``message``: for the user."""

    entry: PresetEntry
    found: CatalogEntry | None
    tag_name: str | None
    how: str | None
    message: str | None = None
    severity: str = "info"


class LoraResolver:
    """Resolves preset rows against the LoRA folders of a ``LoraCatalog``. Keep one per generation (or per
    catalog refresh): it remembers the hashes it has looked at."""

    def __init__(self, catalog: LoraCatalog, hash_cache: HashCache | None = None) -> None:
        self.catalog = catalog
        self.hash_cache = hash_cache or HashCache()
        self._by_sha: dict[str, CatalogEntry] | None = None
        self._rescanned = False

    def hashes(self, path: Path) -> FileHashes | None:
        try:
            return self.hash_cache.get(path)
        except OSError:
            return None

    def _sha(self, entry: CatalogEntry) -> str | None:
        h = self.hashes(entry.path)
        return None if h is None or h.sha256 == EMPTY_SHA256 else h.sha256

    def _reachable(self) -> list[CatalogEntry]:
        """Every file some prompt name reaches (a file shadowed by a later one with the same stem keeps its alias)."""
        seen: dict[str, CatalogEntry] = {}
        for e in [*self.catalog.entries.values(), *self.catalog.aliases.values()]:
            seen.setdefault(str(e.path), e)
        return list(seen.values())

    def _hash_index(self) -> dict[str, CatalogEntry]:
        if self._by_sha is None:
            self._by_sha = {}
            for e in self._reachable():
                if e.fault:
                    continue
                sha = self._sha(e)
                if sha is not None:
                    self._by_sha.setdefault(sha, e)
        return self._by_sha

    def _rescan_once(self) -> bool:
        if self._rescanned:
            return False
        self._rescanned = True
        self.catalog.rescan()
        self._by_sha = None
        return True

    def _by_stem(self, stem: str) -> CatalogEntry | None:
        found = self.catalog.entries.get(stem)
        if found is None and self._rescan_once():
            found = self.catalog.entries.get(stem)
        return found

    def _lookup(self, name: str) -> CatalogEntry | None:
        """``LoraCatalog.find`` without its rescan on a miss (the resolver rescans at most once in all)."""
        if name.lower() in self.catalog.forbidden_aliases:
            return self.catalog.entries.get(name)
        return self.catalog.aliases.get(name)

    def _by_prompt_name(self, name: str) -> CatalogEntry | None:
        found = self._lookup(name)
        if found is None and self._rescan_once():
            found = self._lookup(name)
        return found

    def tag_name(self, found: CatalogEntry, preferred: str | None = None) -> str:
        """A prompt name that reaches ``found``: ``preferred`` (the name the user typed), else its stem, else its
        alias (the stem may belong to a later file)."""
        for candidate in (preferred, found.name, found.alias):
            if not candidate:
                continue
            hit = self._lookup(candidate)
            if hit is not None and hit.path == found.path:
                return candidate
        return found.name

    def resolve(self, entry: PresetEntry, preset: str = "") -> Resolution:
        where = f"preset {preset!r}: " if preset else ""
        candidates: list[tuple[str, CatalogEntry | None]] = []
        if entry.file_stem:
            candidates.append(("file", self._by_stem(entry.file_stem)))
        if entry.alias:
            candidates.append(("alias", self._by_prompt_name(entry.alias)))
        if entry.name != entry.alias:
            candidates.append(("name", self._by_prompt_name(entry.name)))

        sha = entry.sha256 if entry.sha256 and entry.sha256 != EMPTY_SHA256 else None
        if sha:
            for _, cand in candidates:  # the usual case: the named file is the saved one; hash only that
                if cand is not None and not cand.fault and self._sha(cand) == sha:
                    return Resolution(entry, cand, self.tag_name(cand, entry.name), "hash")
            found = self._hash_index().get(sha)
            if found is None and self._rescan_once():
                found = self._hash_index().get(sha)
            if found is not None:
                note = f"{where}{entry.label} was found by its hash as {found.path.name}"
                return Resolution(entry, found, self.tag_name(found, entry.name), "hash", note, "info")

        for how, cand in candidates:
            if cand is None:
                continue
            note = None
            severity = "info"
            if sha:
                severity = "warning"
                note = (
                    f"{where}no file has the saved hash of {entry.label} (sha256 {sha[:12]}…); using {cand.path.name}, "
                    f"found by {'file name' if how == 'file' else how}, whose content differs (another version?)"
                )
            return Resolution(entry, cand, self.tag_name(cand, entry.name), how, note, severity)

        close = self.catalog.suggestions(entry.file_stem or entry.alias or entry.name)
        hint = f" (close names: {', '.join(repr(c) for c in close)})" if close else ""
        ident = f" (sha256 {sha[:12]}…)" if sha else ""
        message = f"{where}LoRA {entry.label}{ident} not found in the LoRA folders; left out{hint}"
        return Resolution(entry, None, None, None, message, "warning")

    def describe(self, name: str) -> PresetEntry | None:
        """Identity of the LoRA a prompt name reaches (sha256, WebUI hash, file name, alias), for saving."""
        found = self.catalog.find(name)
        if found is None:
            return None
        h = None if found.fault else self.hashes(found.path)
        sha = h.sha256 if h is not None and h.sha256 != EMPTY_SHA256 else None
        addnet = found.metadata.get("sshs_model_hash") or (h.addnet if h is not None and sha else None)
        if addnet and not (8 <= len(addnet) <= 64 and all(c in "0123456789abcdefABCDEF" for c in addnet)):
            addnet = None
        return PresetEntry(name, sha256=sha, addnet=addnet and addnet.lower(), file=found.path.name, alias=found.alias)

    def pin(self, entry: PresetEntry) -> tuple[PresetEntry, str | None]:
        """``entry`` with the identity of the file its name reaches filled in; a message when not found."""
        ident = self.describe(entry.name)
        if ident is None:
            return entry, self.catalog.not_found_message(entry.name) + "; saved by name only"
        return replace(entry, sha256=ident.sha256, addnet=ident.addnet, file=ident.file, alias=ident.alias), None
