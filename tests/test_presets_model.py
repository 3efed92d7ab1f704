"""The preset schema: every field round-trips, names are checked, bad data is refused with where and why."""

from __future__ import annotations

import json

import pytest

from lib_lorastack.presets.errors import PresetNameError, PresetSchemaError
from lib_lorastack.presets.model import EMPTY_SHA256, SCHEMA_VERSION, PresetDocument
from lib_lorastack.presets.store import read_document_bytes
from lib_lorastack.presets.validate import (
    NewerSchemaError,
    check_name,
    document_from_json,
    document_to_json,
    preset_from_json,
    preset_to_json,
)
from tests.helpers.preset_fixtures import full_preset

HOSTILE = ["../x", "a/b", "a\\b", "..", ".", "a\x00b", "a\nb", "tab\there", "x" * 10_000, "<", "a>b", "a:b", " lead",
           "trail ", "", "rtl\u202eoverride", "zero\u200bwidth"]  # fmt: skip
FRIENDLY = ["Marque été", "日本語のプリセット", "brand (v2) [final]", "emoji 👩\u200d💻", "a" * 100, "ALL0.5-like name"]


def test_every_field_round_trips_through_json() -> None:
    doc = PresetDocument({"brand": full_preset()}, {"MYOUT": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"})
    text = json.dumps(document_to_json(doc))
    again = read_document_bytes(text.encode())
    assert again == doc
    p = again.presets["brand"]
    e = p.entries[0]
    assert (e.te, e.unet, e.dyn, e.x, e.start, e.stop, e.enabled) == (0.8, 0.6, 8, 0.3, 2, 20, False)
    assert (e.sha256, e.addnet, e.file, e.alias, e.lbwe) == ("ab" * 32, "cd" * 32, "alice_v2.safetensors", "Alice", "ATTNDEEPOFF")
    assert (p.scale, p.family, p.created, p.updated) == (0.9, "sdxl", "2025-01-02T03:04:05+00:00", "2025-02-03T04:05:06+00:00")
    assert p.triggers == "lsx_girl, red scarf" and p.negative_triggers == "blurry, lowres"
    assert p.description.endswith("line two")
    assert document_to_json(again)["version"] == SCHEMA_VERSION


def test_defaults_for_optional_fields() -> None:
    p = preset_from_json({"name": "x", "entries": [{"name": "a", "te": 0.7}]})
    assert p.entries[0].unet == 0.7 and p.entries[0].enabled and p.scale == 1.0 and p.family is None
    assert p.triggers == "" and p.created is None


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(PresetNameError):
        check_name(name)
    data = preset_to_json(full_preset())
    data["name"] = name
    with pytest.raises(PresetSchemaError):
        preset_from_json(data)


@pytest.mark.parametrize("name", FRIENDLY)
def test_unicode_names_are_fine(name: str) -> None:
    assert check_name(name) == name
    data = preset_to_json(full_preset())
    data["name"] = name
    assert preset_from_json(data).name == name


@pytest.mark.parametrize(
    ("change", "where", "fault"),
    [
        (lambda p: p["entries"][1].update(te="0.8"), "entries[1].te", "must be a number"),
        (lambda p: p["entries"][1].update(te=float("nan")), "entries[1].te", "finite"),
        (lambda p: p["entries"][1].update(unet=1e9), "entries[1].unet", "out of range"),
        (lambda p: p["entries"][0].update(sha256="xyz"), "entries[0].sha256", "64 hexadecimal"),
        (lambda p: p["entries"][0].update(lbw="1,0,q,0,0,0,0,0,1,1,1,1,1,1,1,1,1"), "entries[0].lbw", "not a number"),
        (lambda p: p["entries"][0].update(lbw="1,0,0"), "entries[0].lbw", "3 values"),
        (lambda p: p["entries"][0].update(lbw="OUT:ALL"), "entries[0].lbw", "not a block preset"),
        (lambda p: p["entries"][0].update(start=-1), "entries[0].start", "out of range"),
        (lambda p: p["entries"][0].update(dyn=True), "entries[0].dyn", "whole number"),
        (lambda p: p["entries"][0].update(enabled="yes"), "entries[0].enabled", "true or false"),
        (lambda p: p["entries"][0].update(file="../../etc/passwd"), "entries[0].file", "not allowed"),
        (lambda p: p["entries"][0].update(wieght=1), "entries[0]", "unknown field"),
        (lambda p: p["entries"][0].pop("name"), "entries[0]", "has no 'name'"),
        (lambda p: p.update(entries=[]), "entries", "1 to"),
        (lambda p: p.update(entries="a,b"), "entries", "must be a list"),
        (lambda p: p.update(family="sd15"), "family", "one of sd1"),
        (lambda p: p.update(scale=None, triggers=5), "triggers", "must be a string"),
        (lambda p: p.update(triggers="x <lora:evil:1>"), "triggers", "contains a tag"),
        (lambda p: p.update(description="a\x00b"), "description", "U+0000"),
        (lambda p: p.update(created="yesterday"), "created", "ISO 8601"),
        (lambda p: p.update(extra=1), "", "unknown field"),
    ],
)
def test_schema_errors_name_the_preset_and_field(change, where: str, fault: str) -> None:
    data = preset_to_json(full_preset())
    change(data)
    with pytest.raises(PresetSchemaError) as err:
        preset_from_json(data, "presets[3]")
    assert err.value.where.startswith("presets[3] 'brand'")
    assert err.value.where.endswith(where) and fault in err.value.fault, str(err.value)


def test_empty_file_hash_is_no_hash() -> None:
    data = preset_to_json(full_preset())
    data["entries"][0]["sha256"] = EMPTY_SHA256.upper()
    assert preset_from_json(data).entries[0].sha256 is None


def test_document_level_faults() -> None:
    good = document_to_json(PresetDocument({"brand": full_preset()}))
    with pytest.raises(NewerSchemaError, match="newer lorastack"):
        document_from_json({**good, "version": SCHEMA_VERSION + 1})
    for bad, text in [
        ({**good, "version": "1"}, "whole number"),
        ({**good, "format": "something-else"}, "not a lorastack preset file"),
        ({**good, "presets": [good["presets"][0], good["presets"][0]]}, "a second preset named 'brand'"),
        ({**good, "block_presets": {"a,b": "1," * 16 + "1"}}, "block preset name"),
        ({**good, "block_presets": {"MINE": "1,1,1"}}, "3 values"),
        ([], "must be a JSON object"),
    ]:
        with pytest.raises(PresetSchemaError, match=text):
            document_from_json(bad)


def test_strict_json_reading() -> None:
    for raw, text in [
        (b'{"version": 1, "presets": [}', "line 1, column 28"),
        (b'{"version": 1, "version": 1}', "appears twice"),
        (b'{"version": NaN}', "NaN is not a JSON number"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"   ", "is empty"),
        (b"[" * 100_000, "nested too deeply"),
    ]:
        with pytest.raises(ValueError, match=text):
            read_document_bytes(raw)
