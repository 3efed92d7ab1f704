"""Imports: the WebUI's styles.csv, lora-block-weight's lbwpresets.txt, export files; merging with conflicts."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from lib_lorastack.presets.errors import PresetConflictError, PresetImportError, PresetNotFoundError
from lib_lorastack.presets.imports import (
    export_document,
    merge_into,
    read_lbw_presets,
    read_preset_file,
    read_styles_csv,
)
from lib_lorastack.presets.model import Preset, PresetDocument, PresetEntry
from lib_lorastack.presets.resolve import LoraResolver
from lib_lorastack.presets.store import encode_document
from lib_lorastack.presets.validate import document_to_json
from lib_lorastack.stack.catalog import LoraCatalog
from tests.helpers.preset_fixtures import full_preset, tiny_lora


def styles_csv(rows: list[tuple[str, str, str]]) -> str:
    """As the WebUI writes it (modules/styles.py: csv.DictWriter with a header)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["name", "prompt", "negative_prompt"])
    writer.writeheader()
    for name, prompt, negative in rows:
        writer.writerow({"name": name, "prompt": prompt, "negative_prompt": negative})
    return out.getvalue()


STYLES = styles_csv(
    [
        ("Brand A", "<lora:alice:0.8> <lora:style:0.6:lbw=OUTALL:start=4>, lsx_girl, {prompt}, red scarf", "blurry, <lora:x:1>"),
        ("plain", "masterpiece, best quality", "lowres"),
        ("LoRA: Bob", "<lora:bob:1:0.5>\nbob man, <hypernet:hn:1>", ""),
        ("LoRA- Bob", "<lora:bob:0.2>", ""),
        ("broken", "<lora:bad:0.8x>", ""),
    ]
)


def test_styles_with_lora_tags_become_presets() -> None:
    presets, problems = read_styles_csv("\ufeff" + STYLES)
    by_name = {p.name: p for p in presets}
    assert list(by_name) == ["Brand A", "LoRA- Bob (2)", "LoRA- Bob"]  # a changed name never takes a real one
    brand = by_name["Brand A"]
    assert [(e.name, e.te, e.unet, e.lbw, e.start) for e in brand.entries] == [
        ("alice", 0.8, 0.8, None, None),
        ("style", 0.6, 0.6, "OUTALL", 4),
    ]
    assert brand.triggers == "lsx_girl, red scarf" and brand.negative_triggers == "blurry"
    bob = by_name["LoRA- Bob (2)"]
    assert (bob.entries[0].te, bob.entries[0].unet, bob.triggers) == (1.0, 0.5, "bob man")
    text = [str(p) for p in problems]
    assert any("line 3 (style 'plain')" in t and "skipped" in t for t in text)
    assert any("line 4 (style 'LoRA: Bob')" in t and "imported as 'LoRA- Bob (2)'" in t for t in text)
    assert any("<hypernet:…>" in t for t in text)
    assert any("'broken'" in t and "not a number" in t for t in text)
    assert "broken" not in by_name


def test_styles_import_records_hashes_with_a_lora_folder(tmp_path: Path) -> None:
    tiny_lora(tmp_path / "alice.safetensors", seed=1)
    presets, problems = read_styles_csv(STYLES, resolver=LoraResolver(LoraCatalog(tmp_path)), family="sd1")
    alice = presets[0].entries[0]
    assert alice.sha256 and alice.file == "alice.safetensors" and presets[0].family == "sd1"
    assert any("LoRA not found: 'style'" in str(p) for p in problems)


def test_files_that_are_not_styles_are_refused() -> None:
    with pytest.raises(PresetImportError, match="no 'name' and 'prompt' columns"):
        read_styles_csv("a,b\n1,2\n")
    with pytest.raises(PresetImportError, match="line"):
        read_styles_csv('name,prompt\n"unterminated,<lora:a:1>\n')


LBW = """# my presets
MYOUT:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1
XLMID:1,0,0,0,0,1,0,0,0,0,0,0
SHORT:1,0,0
BADVAL:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,q
RND:1,R,U,X,X+0.5,0,0,0,1,1,1,1,1,1,1,1,1
no colon here
bad,name:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1
"""


def test_lbw_presets_file() -> None:
    presets, problems = read_lbw_presets(LBW)
    assert presets == {
        "MYOUT": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
        "XLMID": "1,0,0,0,0,1,0,0,0,0,0,0",
        "RND": "1,R,U,X,X+0.5,0,0,0,1,1,1,1,1,1,1,1,1",
    }
    text = "\n".join(map(str, problems))
    assert "line 4" in text and "3 values" in text
    assert "line 5" in text and "'q'" in text
    assert "line 7" in text and "no ':'" in text
    assert "line 8" in text and "'bad,name'" in text


def test_export_and_import_files(tmp_path: Path) -> None:
    doc = PresetDocument(
        {"brand": full_preset(), "b2": Preset("b2", (PresetEntry("s", lbw="MYOUT"),))},
        {"MYOUT": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1", "UNUSED": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"},
    )
    exported = export_document(doc, ["b2"])
    assert list(exported.presets) == ["b2"] and list(exported.block_presets) == ["MYOUT"]
    assert read_preset_file(encode_document(exported)) == exported
    with pytest.raises(PresetNotFoundError):
        export_document(doc, ["nope"])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["presets"][0]["entries"][0].update(te="1"), "presets[0] 'brand'.entries[0].te: must be a number"),
        (lambda d: d["presets"][1].update(name="../evil"), "presets[1]: name '../evil' contains '/'"),
        (lambda d: d.update(version=2), "schema version 2"),
        (lambda d: d.update(presets={"a": 1}), "presets: must be a list"),
    ],
)
def test_import_refuses_files_that_fail_the_schema(mutate, message: str) -> None:
    data = document_to_json(PresetDocument({"brand": full_preset(), "b": full_preset("b")}))
    mutate(data)
    with pytest.raises(PresetImportError) as err:
        read_preset_file(json.dumps(data).encode(), source="shared.json")
    assert str(err.value).startswith("shared.json: ") and message in str(err.value) and "nothing was imported" in str(err.value)


def test_import_refuses_non_json_and_pickles() -> None:
    import pickle

    for data in (pickle.dumps({"presets": []}), b"PK\x03\x04zip", b'{"version": 1, "presets": [,]}'):
        with pytest.raises(PresetImportError):
            read_preset_file(data)


def test_merge_modes() -> None:
    a1 = Preset("a", (PresetEntry("x", 1.0, 1.0),))
    a2 = Preset("a", (PresetEntry("x", 0.5, 0.5),), created="2025-01-01T00:00:00+00:00")
    doc = PresetDocument({"a": a1}, {"B": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"})
    with pytest.raises(PresetConflictError) as err:
        merge_into(doc, [a2, Preset("new", (PresetEntry("y"),))])
    assert err.value.names == ["a"] and list(doc.presets) == ["a"]  # nothing changed
    report = merge_into(doc, [a1, Preset("new", (PresetEntry("y"),))])
    assert report.unchanged == ["a"] and report.added == ["new"]
    report = merge_into(doc, [a2], mode="rename")
    assert report.renamed == {"a": "a (2)"} and doc.presets["a (2)"].entries[0].te == 0.5 and doc.presets["a"] == a1
    report = merge_into(doc, [a2], mode="overwrite")
    assert report.replaced == ["a"] and doc.presets["a"] == a2

    other_b = "0,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"
    uses_b = Preset("uses", (PresetEntry("z", lbw="B"),))
    with pytest.raises(PresetConflictError, match="block preset B"):
        merge_into(doc, [uses_b], {"B": other_b})
    merge_into(doc, [uses_b], {"B": other_b}, mode="rename")
    assert doc.block_presets["B_2"] == other_b and doc.presets["uses"].entries[0].lbw == "B_2"
    long = "L" * 100
    doc.block_presets[long] = other_b
    merge_into(doc, [], {long: "1," * 16 + "1"}, mode="rename")
    assert "L" * 98 + "_2" in doc.block_presets  # still a valid name
