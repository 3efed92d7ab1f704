"""The hashes the WebUI shows and writes into infotext ("Lora hashes"), computed the same way.

* ``sha256``: of the whole file (what Civitai lists; its first 10 hex digits are "AutoV2").
* ``addnet``: sha256 of the bytes after the safetensors header (the WebUI's LoRA hash, as in
  ``modules/hashes.py``'s addnet hash); the infotext's short form is its first 12 hex digits. A file whose
  metadata carries ``sshs_model_hash`` uses that instead, as the WebUI does.
Results are cached by path, size and mtime, in memory and optionally in a JSON file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

_BLOCK = 1 << 20


@dataclass(frozen=True)
class FileHashes:
    sha256: str
    addnet: str

    @property
    def autov2(self) -> str:
        return self.sha256[:10]

    @property
    def short(self) -> str:
        """The form the WebUI writes into "Lora hashes"."""
        return self.addnet[:12]


def _digest(f, start: int) -> str:
    h = hashlib.sha256()
    f.seek(start)
    while chunk := f.read(_BLOCK):
        h.update(chunk)
    return h.hexdigest()


def compute_hashes(path: str | Path) -> FileHashes:
    with open(path, "rb") as f:
        full = _digest(f, 0)
        f.seek(0)
        head = f.read(8)
        offset = struct.unpack("<Q", head)[0] + 8 if len(head) == 8 else 0
        addnet = _digest(f, offset)
    return FileHashes(full, addnet)


class HashCache:
    """Hashes keyed by (path, size, mtime); optional JSON file so a restart does not rehash."""

    def __init__(self, cache_file: str | Path | None = None) -> None:
        self.cache_file = Path(cache_file) if cache_file else None
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        if self.cache_file and self.cache_file.is_file():
            try:
                self._entries = json.loads(self.cache_file.read_text("utf-8"))
            except (OSError, json.JSONDecodeError):
                self._entries = {}  # a broken cache is only a cache: rebuild it

    def get(self, path: str | Path) -> FileHashes:
        path = Path(path)
        st = path.stat()
        key = str(path.resolve())
        with self._lock:
            entry = self._entries.get(key)
            if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
                return FileHashes(entry["sha256"], entry["addnet"])
        hashes = compute_hashes(path)
        with self._lock:
            self._entries[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **asdict(hashes)}
            if self.cache_file:
                try:
                    self.cache_file.parent.mkdir(parents=True, exist_ok=True)
                    tmp = self.cache_file.with_suffix(".tmp")
                    tmp.write_text(json.dumps(self._entries), "utf-8")
                    os.replace(tmp, self.cache_file)
                except OSError:
                    pass  # the cache is only a cache: keep going with the hashes in memory
        return hashes


    def known_short(self, short: str, kind: str = "addnet") -> list[tuple[int, int]]:
        """(size, mtime) of every cached file whose short hash of ``kind`` ("addnet", or "sha256" as Forge writes)
        is ``short``: a renamed or moved file keeps both, so it can be found again without hashing a whole folder."""
        with self._lock:
            return [(e["size"], e["mtime_ns"]) for e in self._entries.values() if e.get(kind, "")[:12] == short]


_default_cache = HashCache()


def file_hashes(path: str | Path) -> FileHashes:
    return _default_cache.get(path)


def lora_hash(path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """The hash the WebUI uses for a LoRA (``sshs_model_hash`` when the file carries it)."""
    if metadata and metadata.get("sshs_model_hash"):
        return metadata["sshs_model_hash"]
    return file_hashes(path).addnet
