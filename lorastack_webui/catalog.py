"""The LoRA index: the built-in's (names, aliases, subfolders, --lora-dir, its hashes), else our own scan."""

from __future__ import annotations

import os
from pathlib import Path

from lib_lorastack.formats.hashes import HashCache
from lib_lorastack.host.infotext import usable_hash
from lib_lorastack.stack import LoraCatalog
from lib_lorastack.stack.catalog import CatalogEntry

from . import builtin


class BuiltinCatalog(LoraCatalog):
    """Reads the built-in's index instead of scanning; a miss asks the built-in to rescan, as its own lookup does."""

    def __init__(self) -> None:
        self.folders = []
        self.entries: dict[str, CatalogEntry] = {}
        self.aliases: dict[str, CatalogEntry] = {}
        self.forbidden_aliases: set[str] = set()
        self._read()

    def _read(self) -> None:
        net = builtin.networks()
        if net is None:
            return
        by_file: dict[str, CatalogEntry] = {}

        def entry(on_disk) -> CatalogEntry:
            e = by_file.get(on_disk.filename)
            if e is None:
                e = by_file[on_disk.filename] = CatalogEntry(on_disk.name, Path(on_disk.filename), on_disk.alias, dict(on_disk.metadata or {}))
            return e

        self.entries = {name: entry(d) for name, d in net.available_networks.items()}
        self.aliases = {name: entry(d) for name, d in net.available_network_aliases.items()}
        self.forbidden_aliases = {a.lower() for a in net.forbidden_network_aliases}

    def rescan(self) -> None:
        net = builtin.networks()
        if net is not None:
            net.list_available_networks()
        self._read()


def own_catalog(cmd_opts, models_path: str) -> LoraCatalog:
    """Our own scan of the same folders, when the built-in extension is disabled."""
    folders = [getattr(cmd_opts, "lora_dir", None) or os.path.join(models_path, "Lora")]
    lyco = getattr(cmd_opts, "lyco_dir_backcompat", None) or os.path.join(models_path, "LyCORIS")
    return LoraCatalog(*folders, lyco)


class Hashes:
    """The WebUI's short hash of a LoRA (``sshs_model_hash`` from its metadata, else the "addnet" hash of its
    tensors, or on Forge (``kind`` "sha256") the whole file's sha256), computed once per file and kept in a JSON
    file in the data directory."""

    def __init__(self, cache_file: str | None, kind: str = "addnet") -> None:
        self.cache = HashCache(cache_file)
        self.kind = kind

    def short(self, entry: CatalogEntry) -> str | None:
        meta = entry.metadata.get("sshs_model_hash")
        return (meta or getattr(self.cache.get(entry.path), self.kind))[:12]

    def local_name(self, short: str, catalog: LoraCatalog, preferred: str) -> str | None:
        """The name to write in a tag for the local file with this short hash, looked up only inside the index: the
        built-in's hash table, then the files we hashed before (found again by size and date after a rename)."""
        if not usable_hash(short):
            return None
        net = builtin.networks()
        if net is not None:
            on_disk = net.available_network_hash_lookup.get(short)
            if on_disk is not None:
                return on_disk.get_alias()
        known = set(self.cache.known_short(short, self.kind))
        if not known:
            return None
        for entry in {str(e.path): e for e in catalog.aliases.values()}.values():
            try:
                st = os.stat(entry.path)
                if (st.st_size, st.st_mtime_ns) in known and self.short(entry) == short:
                    use_stem = preferred == "Filename" or entry.alias.lower() in catalog.forbidden_aliases
                    return entry.name if use_stem else entry.alias
            except OSError:
                continue
        return None
