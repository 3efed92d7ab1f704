"""The preset store: one JSON file, written atomically, previous good version kept as ``<file>.bak``.

* Every change is a read-modify-write under an inter-process lock (``<file>.lock``): it re-reads the file and
  applies only its own change, so concurrent saves (two browser tabs, the CLI beside the WebUI) lose nothing.
* A file that cannot be read (broken JSON, schema fault, newer schema, too big) raises ``PresetFileError`` naming
  the file and the fault; every change is refused until the user restores the backup (``restore_backup``) or
  resets (``reset``); both keep the broken file aside (``<file>.broken-<time>``), so nothing is ever lost.
"""

from __future__ import annotations

import difflib
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from .errors import PresetConflictError, PresetError, PresetFileError, PresetNotFoundError, PresetSchemaError
from .lock import FileLock
from .model import Preset, PresetDocument, now_iso
from .validate import (
    NewerSchemaError,
    block_presets_from_json,
    check_name,
    check_preset,
    document_from_json,
    document_to_json,
)

MAX_FILE_BYTES = 16 * 1024 * 1024
T = TypeVar("T")


def default_store_path() -> Path:
    """``$LORASTACK_PRESETS``, else ``~/.config/lorastack/presets.json`` (the WebUI passes its own data dir)."""
    env = os.environ.get("LORASTACK_PRESETS")
    return Path(env).expanduser() if env else Path.home() / ".config" / "lorastack" / "presets.json"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def parse_json_bytes(data: bytes, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """Strict JSON from bytes: UTF-8 (BOM allowed), no NaN/Infinity, no repeated keys, bounded size. Raises
    ``ValueError`` with a message that gives the line and column where JSON says so."""
    if len(data) > max_bytes:
        raise ValueError(f"is {len(data)} bytes; the limit is {max_bytes}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"is not UTF-8 text (bad byte at offset {e.start})") from None
    if not text.strip():
        raise ValueError("is empty")
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise ValueError(f"is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except RecursionError:
        raise ValueError("is not usable JSON: nested too deeply") from None
    except ValueError as e:
        raise ValueError(f"is not valid JSON: {e}") from None


def read_document_bytes(data: bytes, max_bytes: int = MAX_FILE_BYTES) -> PresetDocument:
    """A store or export file's bytes → ``PresetDocument``; ``ValueError`` (JSON) or ``PresetSchemaError``."""
    return document_from_json(parse_json_bytes(data, max_bytes))


def atomic_write(path: Path, data: bytes) -> None:
    """Temporary file in the same folder, flush, fsync, ``os.replace``: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename durable (POSIX); Windows has no directory handles
        try:
            fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _replace(src: Path, dst: Path) -> None:
    """``os.replace``; on Windows a reader holding ``dst`` open makes it fail for a moment, so retry briefly."""
    for attempt in range(50):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if os.name != "nt" or attempt == 49:
                raise
            time.sleep(0.02)


def encode_document(doc: PresetDocument) -> bytes:
    return (json.dumps(document_to_json(doc), indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


class PresetStore:
    """Presets in the JSON file ``path``. Holds no state between calls except a read cache keyed on the file's
    identity, size and times; any number of stores (and processes) may share one file."""

    def __init__(self, path: str | Path, *, lock_timeout: float = 10.0, max_bytes: int = MAX_FILE_BYTES) -> None:
        self.path = Path(path)
        self.backup_path = self.path.with_name(self.path.name + ".bak")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout = lock_timeout
        self.max_bytes = max_bytes
        self._cache: tuple[tuple[int, ...], PresetDocument] | None = None

    # ---- reading ----

    def _read(self, path: Path) -> tuple[PresetDocument, bytes | None]:
        """The document in ``path`` (empty when the file does not exist) and its bytes."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return PresetDocument(), None
        except OSError as e:
            raise PresetFileError(path, f"cannot be read: {e.strerror or e}") from None
        if st.st_size > self.max_bytes:
            raise self._fault(path, f"is {st.st_size} bytes; the limit is {self.max_bytes}")
        try:
            with open(path, "rb") as f:
                data = f.read(self.max_bytes + 1)
        except OSError as e:
            raise PresetFileError(path, f"cannot be read: {e.strerror or e}") from None
        try:
            return read_document_bytes(data, self.max_bytes), data
        except NewerSchemaError as e:
            raise PresetFileError(path, e.fault, newer_schema=True) from None
        except PresetSchemaError as e:
            raise self._fault(path, f"does not follow the preset schema: {e}") from None
        except ValueError as e:
            raise self._fault(path, str(e)) from None

    def _fault(self, path: Path, fault: str) -> PresetFileError:
        backup = None
        if path == self.path and self.backup_usable():
            backup = self.backup_path
        return PresetFileError(path, fault, backup=backup)

    def load(self) -> PresetDocument:
        """The current document (a copy; change the store through its methods). Raises ``PresetFileError``."""
        try:
            st = self.path.stat()
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except OSError:
            key = None
        if key is not None and self._cache is not None and self._cache[0] == key:
            return self._cache[1].copy()
        doc, _ = self._read(self.path)
        if key is not None:
            self._cache = (key, doc.copy())
        return doc

    def load_backup(self) -> PresetDocument:
        """What ``<file>.bak`` holds (to show the user before restoring). Raises ``PresetFileError``."""
        if not self.backup_path.exists():
            raise PresetFileError(self.backup_path, "there is no backup file")
        doc, _ = self._read(self.backup_path)
        return doc

    def backup_usable(self) -> bool:
        if not self.backup_path.is_file():
            return False
        try:
            self._read(self.backup_path)
        except PresetError:
            return False
        return True

    def list(self) -> list[Preset]:
        return list(self.load().presets.values())

    def get(self, name: str) -> Preset:
        doc = self.load()
        if name not in doc.presets:
            raise PresetNotFoundError(name, suggest(name, doc.presets))
        return doc.presets[name]

    # ---- changing ----

    def update(self, change: Callable[[PresetDocument], T]) -> T:
        """Lock, re-read the file, let ``change`` edit a copy of the document, write it if it changed."""
        with FileLock(self.lock_path, self.lock_timeout):
            doc, raw = self._read(self.path)
            new = doc.copy()
            result = change(new)
            if new.presets != doc.presets or new.block_presets != doc.block_presets or list(new.presets) != list(doc.presets):
                self._write(new, raw)
            return result

    def _write(self, doc: PresetDocument, previous: bytes | None) -> None:
        document_from_json(document_to_json(doc))  # never write what could not be read back (PresetSchemaError)
        data = encode_document(doc)
        if len(data) > self.max_bytes:
            raise PresetError(f"preset file {self.path} would be {len(data)} bytes; the limit is {self.max_bytes}")
        if previous is not None:
            atomic_write(self.backup_path, previous)  # the version being replaced was read and checked: good
        atomic_write(self.path, data)
        self._cache = None

    def save(self, preset: Preset, *, overwrite: bool = True, touch: bool = True) -> Preset:
        """Add or replace one preset; returns it as stored. ``touch``: set ``updated`` to now (and ``created``,
        kept from the replaced preset). Imports pass ``touch=False`` to keep the times they carry."""
        preset = check_preset(preset)

        def change(doc: PresetDocument) -> Preset:
            old = doc.presets.get(preset.name)
            if old is not None and not overwrite:
                raise PresetConflictError([preset.name], f"a preset named {preset.name!r} already exists")
            stored = preset
            if touch:
                now = now_iso()
                created = old.created if old is not None and old.created else (preset.created or now)
                stored = replace(preset, created=created, updated=now)
            doc.presets[preset.name] = stored
            return stored

        return self.update(change)

    def delete(self, name: str) -> Preset:
        def change(doc: PresetDocument) -> Preset:
            if name not in doc.presets:
                raise PresetNotFoundError(name, suggest(name, doc.presets))
            return doc.presets.pop(name)

        return self.update(change)

    def rename(self, old: str, new: str) -> Preset:
        check_name(new)

        def change(doc: PresetDocument) -> Preset:
            if old not in doc.presets:
                raise PresetNotFoundError(old, suggest(old, doc.presets))
            if new in doc.presets:
                raise PresetConflictError([new], f"a preset named {new!r} already exists")
            preset = doc.presets[old]
            renamed = replace(preset, name=new, updated=now_iso())
            doc.presets = {(new if k == old else k): (renamed if k == old else v) for k, v in doc.presets.items()}
            return renamed

        return self.update(change)

    def save_block_presets(self, presets: dict[str, str], *, overwrite: bool = True) -> list[str]:
        """Add LBW block presets (checked again here); returns the names written."""
        checked = block_presets_from_json(presets)

        def change(doc: PresetDocument) -> list[str]:
            clash = [n for n in checked if n in doc.block_presets and doc.block_presets[n] != checked[n]]
            if clash and not overwrite:
                raise PresetConflictError(clash, f"block preset(s) {', '.join(map(repr, clash))} already exist with other values")
            doc.block_presets.update(checked)
            return list(checked)

        return self.update(change)

    def delete_block_preset(self, name: str) -> None:
        def change(doc: PresetDocument) -> None:
            if name not in doc.block_presets:
                raise PresetNotFoundError(name, suggest(name, doc.block_presets))
            del doc.block_presets[name]

        self.update(change)

    # ---- recovery ----

    def _set_aside(self) -> Path | None:
        if not self.path.exists():
            return None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.broken-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.broken-{stamp}-{n}")
        os.replace(self.path, aside)
        return aside

    def restore_backup(self) -> Path | None:
        """Put ``<file>.bak`` back as the store; the current file is kept aside. Returns where it was put."""
        with FileLock(self.lock_path, self.lock_timeout):
            if not self.backup_path.exists():
                raise PresetFileError(self.backup_path, "there is no backup file to restore")
            _, raw = self._read(self.backup_path)  # refuses a broken backup
            aside = self._set_aside()
            atomic_write(self.path, raw or b"")
            self._cache = None
            return aside

    def reset(self) -> Path | None:
        """Start with an empty store; the current file (broken or not) is kept aside and the backup untouched.
        Returns where the old file was put (None when there was none)."""
        with FileLock(self.lock_path, self.lock_timeout):
            aside = self._set_aside()
            self._cache = None
            return aside


def suggest(name: str, names, n: int = 3) -> list[str]:
    """Close names, for "did you mean" (case differences first)."""

    names = list(names)
    same_case = [c for c in names if c.lower() == str(name).lower() and c != name]
    close = difflib.get_close_matches(str(name), names, n=n, cutoff=0.6)
    return list(dict.fromkeys(same_case + close))[:n]
