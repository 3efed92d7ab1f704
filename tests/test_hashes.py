"""The WebUI's LoRA hashes: full sha256 and the "addnet" sha256 of the bytes after the safetensors header."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

from lib_lorastack.formats.hashes import HashCache, compute_hashes, lora_hash


def test_hashes_match_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    save_file({"x": torch.arange(10.0)}, str(path), metadata={"ss_output_name": "a"})
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    h = compute_hashes(path)
    assert h.sha256 == hashlib.sha256(raw).hexdigest()
    assert h.addnet == hashlib.sha256(raw[8 + n :]).hexdigest()
    assert h.short == h.addnet[:12] and h.autov2 == h.sha256[:10]


def test_known_vector(tmp_path: Path) -> None:
    """A header of 2 bytes ('{}') then 'abc': addnet is sha256('abc')."""
    path = tmp_path / "v.safetensors"
    path.write_bytes(struct.pack("<Q", 2) + b"{}" + b"abc")
    assert compute_hashes(path).addnet == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_metadata_hash_wins_as_in_the_webui(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    assert lora_hash(path, {"sshs_model_hash": "cafe"}) == "cafe"
    assert lora_hash(path, {}) == compute_hashes(path).addnet


def test_cache_by_path_size_mtime(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    cache_file = tmp_path / "hashes.json"
    cache = HashCache(cache_file)
    first = cache.get(path)
    assert cache_file.is_file()
    assert HashCache(cache_file).get(path) == first  # from the file, no rehash needed
    save_file({"x": torch.ones(2)}, str(path))
    os.utime(path, ns=(1, 10**18))
    assert cache.get(path) != first
    cache_file.write_text("{broken")
    assert HashCache(cache_file).get(path) == compute_hashes(path)
