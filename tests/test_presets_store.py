"""The store file: atomic writes with a backup, corrupt files refused (never overwritten), restore and reset,
newer schema versions left alone, and concurrent saves from several processes."""

from __future__ import annotations

import json
import multiprocessing
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lib_lorastack.presets.errors import (
    PresetConflictError,
    PresetFileError,
    PresetLockTimeout,
    PresetNotFoundError,
    PresetSchemaError,
)
from lib_lorastack.presets.lock import FileLock
from lib_lorastack.presets.model import Preset, PresetEntry
from lib_lorastack.presets.store import PresetStore
from tests.helpers.preset_fixtures import full_preset


def simple(name: str, te: float = 1.0) -> Preset:
    return Preset(name, (PresetEntry("a", te, te),))


def test_save_load_round_trip_and_times(tmp_path: Path) -> None:
    store = PresetStore(tmp_path / "sub" / "presets.json")
    kept = store.save(full_preset(), touch=False)
    assert store.get("brand") == kept == full_preset()  # every field, times included
    first = store.save(simple("x"))
    assert first.created and first.updated == first.created
    second = store.save(replace(simple("x", 0.5), created=None))
    assert second.created == first.created and second.entries[0].te == 0.5
    assert [p.name for p in PresetStore(store.path).list()] == ["brand", "x"]
    assert json.loads(store.path.read_text("utf-8"))["version"] == 1
    assert not list(store.path.parent.glob("*.tmp")) and not list(store.path.parent.glob(".*.tmp"))


def test_backup_holds_the_previous_version(tmp_path: Path) -> None:
    store = PresetStore(tmp_path / "presets.json")
    store.save(simple("a"))
    assert not store.backup_path.exists()  # nothing to keep yet
    before = store.path.read_bytes()
    store.save(simple("b"))
    assert store.backup_path.read_bytes() == before
    assert list(store.load_backup().presets) == ["a"]


def test_conflict_not_found_and_delete(tmp_path: Path) -> None:
    store = PresetStore(tmp_path / "presets.json")
    store.save(simple("brand"))
    with pytest.raises(PresetConflictError):
        store.save(simple("brand", 0.3), overwrite=False)
    with pytest.raises(PresetNotFoundError, match="did you mean 'brand'"):
        store.get("brnad")
    with pytest.raises(PresetNotFoundError):
        store.delete("nope")
    store.rename("brand", "Brand 2")
    assert list(store.load().presets) == ["Brand 2"]
    store.delete("Brand 2")
    assert store.list() == []


def test_hostile_names_never_reach_the_disk(tmp_path: Path) -> None:
    store = PresetStore(tmp_path / "d" / "presets.json")
    store.save(simple("ok"))
    for name in ["../x", "a/b", "a\x00b", "a\nb", "x" * 10_000, "<lora:x:1>"]:
        with pytest.raises(PresetSchemaError):
            store.save(simple(name))
    store.save(simple("Marque été 日本語 👩\u200d💻"))
    assert [p.name for p in PresetStore(store.path).list()] == ["ok", "Marque été 日本語 👩\u200d💻"]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["presets.json", "presets.json.bak", "presets.json.lock"]
    assert list(tmp_path.iterdir()) == [tmp_path / "d"]


def _break(store: PresetStore, text: str) -> bytes:
    store.path.write_text(text, "utf-8")
    return store.path.read_bytes()


def test_corrupt_file_is_reported_and_never_overwritten(tmp_path: Path) -> None:
    store = PresetStore(tmp_path / "presets.json")
    store.save(simple("a"))
    store.save(simple("b"))
    broken = _break(store, '{"version": 1,\n "presets": [\n  {"name": "a",, }\n]}')
    with pytest.raises(PresetFileError) as err:
        store.load()
    message = str(err.value)
    assert str(store.path) in message and "line 3, column" in message
    assert err.value.backup == store.backup_path and "restore" in message
    backup_before = store.backup_path.read_bytes()
    with pytest.raises(PresetFileError):
        store.save(simple("c"))
    with pytest.raises(PresetFileError):
        store.delete("a")
    assert store.path.read_bytes() == broken and store.backup_path.read_bytes() == backup_before

    assert list(store.load_backup().presets) == ["a"]
    aside = store.restore_backup()
    assert aside is not None and aside.read_bytes() == broken  # the broken file is kept, not deleted
    assert list(store.load().presets) == ["a"]
    store.save(simple("c"))
    assert list(store.load().presets) == ["a", "c"]


def test_schema_fault_in_the_store_names_the_preset_and_field(tmp_path: Path) -> None:
    store = PresetStore(tmp_path / "presets.json")
    _break(store, json.dumps({"version": 1, "presets": [{"name": "brand", "entries": [{"name": "a", "te": "high"}]}]}))
    with pytest.raises(PresetFileError, match=r"presets\[0\] 'brand'.entries\[0\].te: must be a number") as err:
        store.load()
    assert err.value.backup is None and "reset" in str(err.value)


def test_reset_keeps_the_broken_file_aside(tmp_path: Path) -> None:
    store = PresetStore(tmp_path / "presets.json")
    broken = _break(store, "not json")
    aside = store.reset()
    assert aside.read_bytes() == broken and aside.parent == tmp_path
    assert store.list() == []
    store.save(simple("fresh"))
    assert [p.name for p in store.list()] == ["fresh"]


def test_broken_backup_is_not_restored(tmp_path: Path) -> None:
    store = PresetStore(tmp_path / "presets.json")
    broken = _break(store, "{")
    store.backup_path.write_text("also broken")
    with pytest.raises(PresetFileError) as err:
        store.load()
    assert err.value.backup is None  # an unusable backup is not offered
    with pytest.raises(PresetFileError, match="not valid JSON"):
        store.restore_backup()
    assert store.path.read_bytes() == broken


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    store = PresetStore(tmp_path / "presets.json")
    future = _break(store, json.dumps({"format": "lorastack-presets", "version": 7, "presets": [], "new_thing": {}}))
    with pytest.raises(PresetFileError, match="schema version 7") as err:
        store.load()
    assert err.value.newer_schema and "update lorastack" in str(err.value)
    with pytest.raises(PresetFileError):
        store.save(simple("a"))
    assert store.path.read_bytes() == future and not store.backup_path.exists()


def test_size_limit(tmp_path: Path) -> None:
    store = PresetStore(tmp_path / "presets.json", max_bytes=2000)
    store.path.write_bytes(b" " * 3000)
    with pytest.raises(PresetFileError, match="3000 bytes; the limit is 2000"):
        store.load()
    store.reset()
    with pytest.raises(Exception, match="limit is 2000"):
        for i in range(100):
            store.save(simple(f"preset number {i}"))
    PresetStore(store.path, max_bytes=2000).load()  # what was written stays valid


def test_nothing_unreadable_is_ever_written(tmp_path: Path) -> None:
    store = PresetStore(tmp_path / "presets.json")
    store.save(simple("a"))
    before = store.path.read_bytes()

    def sneak(doc) -> None:  # a change that bypasses the checks (a bug elsewhere) must not reach the disk
        doc.presets["bad"] = Preset("bad", (PresetEntry("x", float("nan")),))

    with pytest.raises(PresetSchemaError, match="finite"):
        store.update(sneak)
    assert store.path.read_bytes() == before


def test_lock_excludes_and_times_out(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with FileLock(path):
        with pytest.raises(PresetLockTimeout, match="locked by another process"):
            FileLock(path, timeout=0.05).acquire()
        store = PresetStore(tmp_path / "x", lock_timeout=0.05)
        with pytest.raises(PresetLockTimeout):
            store.save(simple("a"))
    with FileLock(path, timeout=0.05):
        pass


def _save_many(path: str, worker: int, count: int) -> None:
    store = PresetStore(path, lock_timeout=60)
    for i in range(count):
        store.save(Preset(f"w{worker}-{i}", (PresetEntry(f"lora{worker}", 0.1 * (i + 1), 0.5),)))


@pytest.mark.skipif(sys.platform == "win32", reason="tests the POSIX (fcntl) path")
def test_concurrent_saves_from_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "presets.json"
    PresetStore(path).save(simple("existing"))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_save_many, args=(str(path), w, 10)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    names = set(PresetStore(path).load().presets)
    assert names == {"existing"} | {f"w{w}-{i}" for w in range(4) for i in range(10)}
    PresetStore(path).load_backup()  # the backup is a valid file too


def test_block_presets_in_the_store(tmp_path: Path) -> None:
    store = PresetStore(tmp_path / "presets.json")
    vector = "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"
    assert store.save_block_presets({"MINE": vector}) == ["MINE"]
    with pytest.raises(PresetConflictError):
        store.save_block_presets({"MINE": "0," * 16 + "0"}, overwrite=False)
    with pytest.raises(PresetSchemaError, match="3 values"):
        store.save_block_presets({"SHORT": "1,0,0"})
    assert store.load().block_presets == {"MINE": vector}
    store.delete_block_preset("MINE")
    with pytest.raises(PresetNotFoundError):
        store.delete_block_preset("MINE")
