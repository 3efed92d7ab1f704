"""<lorastack:NAME[:SCALE]> expansion and finding a preset's files by hash, file name and alias."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lib_lorastack.formats.hashes import HashCache, compute_hashes
from lib_lorastack.presets.expand import expand_prompt
from lib_lorastack.presets.imports import preset_from_prompt
from lib_lorastack.presets.model import EMPTY_SHA256, Preset, PresetDocument, PresetEntry
from lib_lorastack.presets.resolve import LoraResolver
from lib_lorastack.stack.catalog import LoraCatalog
from lib_lorastack.syntax import parse_prompt
from tests.helpers.preset_fixtures import tiny_lora

BRAND = Preset(
    "brand",
    (
        PresetEntry("alice", 0.8, 0.8),
        PresetEntry("style", 0.5, 0.25, lbw="MYOUT", start=3),
        PresetEntry("off", 1.0, 1.0, enabled=False),
        PresetEntry("detail", 0.7, 0.7, lbw="OUTALL", x=0.5),
    ),
    triggers="lsx_girl, red scarf",
    negative_triggers="blurry",
    scale=1.1,
    family="sd1",
)
MYOUT = "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,0.5,0"
DOC = PresetDocument({"brand": BRAND, "other": Preset("other", (PresetEntry("x"),))}, {"MYOUT": MYOUT})


def test_scale_multiplies_every_strength_and_block_presets_are_written_out() -> None:
    out = expand_prompt("photo of <lorastack:brand:0.5>, smiling", presets=DOC)
    assert out.diagnostics == () and out.presets == ("brand",)
    request = parse_prompt(out.prompt)
    assert request.errors == ()
    got = {e.name: (e.te, e.unet, e.lbw, e.start, e.x) for e in request.entries}
    assert got == {
        "alice": (0.44, 0.44, None, None, None),  # 0.8 × 0.5 × 1.1
        "style": (0.275, 0.1375, MYOUT, 3, None),  # the store's block preset inlined: reproducible without it
        "detail": (0.385, 0.385, "OUTALL", None, 0.5),  # LBW's own presets stay by name
    }
    assert "off" not in out.prompt
    assert out.prompt.startswith("photo of <lora:alice:0.44> ") and out.prompt.endswith(", smiling")
    assert "lsx_girl" not in out.prompt and out.negative == ""
    assert request.entries == out.entries


def test_trigger_words_on_request() -> None:
    out = expand_prompt("<lorastack:brand>, outdoors <lorastack:brand:0.2>", "lowres,", presets=DOC, add_triggers=True)
    assert out.prompt.count("lsx_girl, red scarf") == 1  # once per preset
    assert out.prompt.index("lsx_girl") > out.prompt.index("<lora:detail")
    assert out.negative == "lowres, blurry"
    assert expand_prompt("<lorastack:brand>", presets=DOC, add_triggers=True).negative == "blurry"


def test_unknown_preset_and_bad_scale_are_diagnosed_and_left_out() -> None:
    out = expand_prompt("a <lorastack:brnad> b <lorastack:brand:lots> c <lorastack:brand:1:2> <lorastack:a/b>", presets=DOC)
    messages = [d.message for d in out.diagnostics]
    assert all(d.severity == "error" for d in out.diagnostics) and len(messages) == 4
    assert "no preset named 'brnad' (did you mean 'brand'?)" in messages[0]
    assert "scale 'lots' is not a number" in messages[1]
    assert "write <lorastack:NAME:SCALE>" in messages[2]
    assert "'/'" in messages[3]
    assert out.prompt == "a  b  c  " and out.entries == ()
    assert out.diagnostics[0].span == (2, 19)
    for scale in ("nan", "inf", "1e9"):
        assert expand_prompt(f"<lorastack:brand:{scale}>", presets=DOC).errors


def test_family_mismatch_warns_and_negative_prompt_tags_are_removed() -> None:
    out = expand_prompt("<lorastack:brand>", "<lorastack:brand> ugly", presets=DOC, family="sdxl")
    kinds = {d.kind: d for d in out.diagnostics}
    assert "made for sd1" in kinds["preset-family"].message and kinds["preset-family"].severity == "warning"
    assert kinds["negative-prompt"].source == "negative" and out.negative == " ugly"
    assert len(out.entries) == 3


def test_unknown_block_preset_warns() -> None:
    out = expand_prompt("<lorastack:brand>", presets={"brand": BRAND})
    assert any(d.kind == "preset-block-preset" and "'MYOUT'" in d.message for d in out.diagnostics)


# ---- resolving files ----


@pytest.fixture
def loras(tmp_path: Path) -> Path:
    root = tmp_path / "Lora"
    tiny_lora(root / "chars" / "alice_v2.safetensors", alias="Alice", seed=1)
    tiny_lora(root / "style.safetensors", seed=2)
    tiny_lora(root / "detail.safetensors", seed=3)
    return root


def _saved(loras: Path) -> Preset:
    resolver = LoraResolver(LoraCatalog(loras))
    preset, messages = preset_from_prompt("brand", "<lora:Alice:0.8> <lora:style:0.5:lbw=OUTALL> <lora:detail:0.3>", resolver=resolver)
    assert messages == []
    return preset


def test_saving_records_hash_file_and_alias(loras: Path) -> None:
    alice = _saved(loras).entries[0]
    path = loras / "chars" / "alice_v2.safetensors"
    assert alice.sha256 == compute_hashes(path).sha256 and alice.addnet == compute_hashes(path).addnet
    assert (alice.name, alice.file, alice.alias) == ("Alice", "alice_v2.safetensors", "Alice")


def test_renamed_and_moved_file_is_found_by_hash(loras: Path) -> None:
    preset = _saved(loras)
    (loras / "chars" / "alice_v2.safetensors").rename(loras / "moved_alice.safetensors")  # alias goes too
    (loras / "deep").mkdir()
    shutil.move(loras / "style.safetensors", loras / "deep" / "new_style_name.safetensors")
    resolver = LoraResolver(LoraCatalog(loras))
    out = expand_prompt("<lorastack:brand>", presets={"brand": preset}, resolver=resolver)
    names = [e.name for e in out.entries]
    assert names == ["Alice", "new_style_name", "detail"]  # "Alice": the alias reaches the renamed file
    notes = [d for d in out.diagnostics if d.kind == "preset-lora-by-hash"]
    assert len(notes) == 1 and "new_style_name.safetensors" in notes[0].message and notes[0].severity == "info"
    assert LoraCatalog(loras).find("Alice").path.name == "moved_alice.safetensors"


def test_hash_wins_over_a_file_that_took_the_old_name(loras: Path) -> None:
    preset = _saved(loras)
    (loras / "style.safetensors").rename(loras / "style_renamed.safetensors")
    tiny_lora(loras / "style.safetensors", seed=99)  # another file now holds the name
    out = expand_prompt("<lorastack:brand>", presets={"brand": preset}, resolver=LoraResolver(LoraCatalog(loras)))
    assert [e.name for e in out.entries] == ["Alice", "style_renamed", "detail"]


def test_name_and_alias_fallbacks_and_missing_files(loras: Path) -> None:
    preset = _saved(loras)
    tiny_lora(loras / "detail.safetensors", seed=50)  # same name, new content: found by name, with a warning
    (loras / "style.safetensors").unlink()
    out = expand_prompt("<lorastack:brand:2>", presets={"brand": preset}, resolver=LoraResolver(LoraCatalog(loras)))
    assert [(e.name, e.te) for e in out.entries] == [("Alice", 1.6), ("detail", 0.6)]
    by_kind = {d.kind: d for d in out.diagnostics}
    missing = by_kind["preset-lora-missing"]
    assert missing.severity == "warning" and "preset 'brand'" in missing.message and "style.safetensors" in missing.message
    changed = by_kind["preset-lora-by-file"]
    assert changed.severity == "warning" and "content differs" in changed.message

    alias_only = Preset("a", (PresetEntry("gone", file="gone.safetensors", alias="Alice"),))
    res = LoraResolver(LoraCatalog(loras)).resolve(alias_only.entries[0], "a")
    assert res.how == "alias" and res.found.path.name == "alice_v2.safetensors" and res.tag_name == "alice_v2"
    assert LoraResolver(LoraCatalog(loras)).resolve(preset.entries[0]).tag_name == "Alice"  # as the user typed it


def test_the_empty_file_hash_never_resolves(loras: Path) -> None:
    (loras / "empty.safetensors").write_bytes(b"")
    entry = PresetEntry("ghost", sha256=EMPTY_SHA256, file="ghost.safetensors")
    res = LoraResolver(LoraCatalog(loras)).resolve(entry, "p")
    assert res.found is None and "ghost.safetensors" in res.message
    resolver = LoraResolver(LoraCatalog(loras))
    assert resolver.describe("empty").sha256 is None  # a zero-byte file is never recorded by its hash


def test_hash_cache_file_is_used(loras: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hashes.json"
    preset = _saved(loras)
    (loras / "style.safetensors").rename(loras / "s2.safetensors")
    LoraResolver(LoraCatalog(loras), HashCache(cache)).resolve(preset.entries[1])
    assert cache.is_file() and len(HashCache(cache)._entries) >= 1
