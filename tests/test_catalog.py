"""Finding LoRAs by prompt name the way the WebUI does."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from lib_lorastack.stack.catalog import LoraCatalog


def lora(path: Path, alias: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 1)}, str(path), metadata={"ss_output_name": alias} if alias else None)
    return path


def test_stem_alias_subfolders_and_rescan(tmp_path: Path) -> None:
    lora(tmp_path / "chars" / "alice_v2.safetensors", alias="Alice")
    lora(tmp_path / "style.safetensors")
    lora(tmp_path / ".hidden" / "secret.safetensors")
    cat = LoraCatalog(tmp_path)
    assert cat.find("alice_v2").path.name == "alice_v2.safetensors"
    assert cat.find("Alice").name == "alice_v2"
    assert cat.find("alice") is None  # case-sensitive, as the WebUI
    assert cat.find("secret") is None
    lora(tmp_path / "late.safetensors")
    assert cat.find("late") is not None  # a miss rescans once


def test_duplicate_alias_becomes_forbidden(tmp_path: Path) -> None:
    lora(tmp_path / "a.safetensors", alias="shared")
    lora(tmp_path / "b.safetensors", alias="shared")
    cat = LoraCatalog(tmp_path)
    assert "shared" in cat.forbidden_aliases
    assert cat.find("shared") is None
    assert cat.find("a").name == "a"


def test_pickled_files_are_listed_with_their_fault(tmp_path: Path) -> None:
    (tmp_path / "old.ckpt").write_bytes(b"\x80\x04.")
    entry = LoraCatalog(tmp_path).find("old")
    assert entry is not None and "pickled" in entry.fault


def test_not_found_suggests_close_names(tmp_path: Path) -> None:
    lora(tmp_path / "detail_tweaker.safetensors")
    msg = LoraCatalog(tmp_path).not_found_message("detail_tweeker")
    assert "LoRA not found: 'detail_tweeker'" in msg and "detail_tweaker" in msg


def test_scan_order_decides_duplicate_stems_as_the_webui(tmp_path: Path) -> None:
    # Directories in natural order (root before its subfolders), files naturally sorted within each.
    lora(tmp_path / "z_top.safetensors")
    lora(tmp_path / "sub" / "z_top.safetensors", alias="later_alias")
    lora(tmp_path / "sub2" / "a.safetensors", alias="first")
    lora(tmp_path / "sub10" / "a.safetensors")
    cat = LoraCatalog(tmp_path)
    order = [p.relative_to(tmp_path).as_posix() for p in cat._files()]
    assert order == ["z_top.safetensors", "sub/z_top.safetensors", "sub2/a.safetensors", "sub10/a.safetensors"]
    assert cat.find("z_top").path.parent.name == "sub"  # the later file with the same stem wins
    assert cat.find("a").path.parent.name == "sub10"
    assert cat.find("first").path.parent.name == "sub2"  # an overwritten file stays reachable by its alias
    assert cat.find("later_alias").path.parent.name == "sub"


def test_alias_equal_to_an_earlier_stem_is_forbidden(tmp_path: Path) -> None:
    lora(tmp_path / "1_hero.safetensors")
    lora(tmp_path / "2_other.safetensors", alias="1_hero")
    cat = LoraCatalog(tmp_path)
    assert "1_hero" in cat.forbidden_aliases
    assert cat.find("1_hero").name == "1_hero"  # only the exact stem matches a forbidden alias
    assert cat.find("2_other").name == "2_other"
    assert cat.find("none") is None and "none" in cat.forbidden_aliases
