"""The framework-free API handlers: good bodies, malformed and hostile bodies, store faults."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib_lorastack.presets import api
from lib_lorastack.presets.resolve import LoraResolver
from lib_lorastack.presets.store import PresetStore
from lib_lorastack.presets.validate import preset_to_json
from lib_lorastack.stack.catalog import LoraCatalog
from tests.helpers.preset_fixtures import full_preset, tiny_lora


@pytest.fixture
def store(tmp_path: Path) -> PresetStore:
    return PresetStore(tmp_path / "presets.json")


def test_save_get_list_delete(store: PresetStore) -> None:
    assert api.list_presets(store) == (200, {"presets": [], "block_presets": {}})
    body = preset_to_json(full_preset())
    status, out = api.save_preset(store, {"preset": body})
    assert status == 201 and out["preset"]["entries"] == body["entries"] and out["preset"]["updated"]
    status, out = api.save_preset(store, {"preset": body})
    assert status == 409 and out["conflicts"] == ["brand"] and "already exists" in out["error"]
    assert api.save_preset(store, {"preset": body, "overwrite": True})[0] == 200
    status, out = api.get_preset(store, {"name": "brand"})
    assert status == 200 and out["preset"]["triggers"] == "lsx_girl, red scarf"
    status, out = api.list_presets(store, {})
    assert status == 200 and out["presets"][0]["name"] == "brand" and out["presets"][0]["loras"] == ["Alice", "style"]
    status, out = api.get_preset(store, {"name": "brnad"})
    assert status == 404 and out["suggestions"] == ["brand"]
    assert api.rename_preset(store, {"name": "brand", "new_name": "Brand 2"})[0] == 200
    assert api.delete_preset(store, {"name": "Brand 2"}) == (200, {"deleted": "Brand 2"})
    assert api.delete_preset(store, {"name": "Brand 2"})[0] == 404


def test_save_from_a_prompt_records_hashes(store: PresetStore, tmp_path: Path) -> None:
    tiny_lora(tmp_path / "Lora" / "alice.safetensors")
    resolver = LoraResolver(LoraCatalog(tmp_path / "Lora"))
    body = {"name": "b", "prompt": "<lora:alice:0.7> <lora:missing:1> girl", "negative_prompt": "ugly", "family": "sd1"}
    status, out = api.save_preset(store, body, resolver=resolver)
    assert status == 201
    assert out["preset"]["entries"][0]["sha256"] and "sha256" not in out["preset"]["entries"][1]
    assert out["preset"]["triggers"] == "girl" and out["preset"]["negative_triggers"] == "ugly"
    assert any("missing" in m for m in out["messages"])
    assert api.save_preset(store, {"name": "c", "prompt": "no tags at all"})[0] == 400


def test_expand_by_name_and_by_prompt(store: PresetStore) -> None:
    api.save_preset(store, {"name": "b", "prompt": "<lora:a:0.5> <lora:c:1:lbw=OUTALL> tw", "negative_prompt": "nw"})
    status, out = api.expand_for_generation(store, {"name": "b", "scale": 2, "add_triggers": True})
    assert status == 200
    assert out["prompt"] == "<lora:a:1> <lora:c:2:lbw=OUTALL> tw" and out["negative_prompt"] == "nw"
    assert [e["tag"] for e in out["entries"]] == ["<lora:a:1>", "<lora:c:2:lbw=OUTALL>"]
    status, out = api.expand_for_generation(store, {"prompt": "x <lorastack:b> <lorastack:zz>", "negative_prompt": "n"})
    assert status == 200 and out["prompt"] == "x <lora:a:0.5> <lora:c:1:lbw=OUTALL> " and out["negative_prompt"] == "n"
    assert out["diagnostics"][0]["kind"] == "preset-not-found" and out["diagnostics"][0]["span"] == [16, 30]
    assert api.expand_for_generation(store, {"name": "zz"})[0] == 404


@pytest.mark.parametrize(
    ("handler", "body", "text"),
    [
        (api.get_preset, [], "must be a JSON object"),
        (api.get_preset, "brand", "must be a JSON object"),
        (api.get_preset, {}, "'name' is missing"),
        (api.get_preset, {"name": 5}, "must be a string"),
        (api.get_preset, {"name": "../etc/passwd"}, "'/'"),
        (api.get_preset, {"name": "a\x00b"}, "U+0000"),
        (api.get_preset, {"name": "x" * 10_000}, "at most 100"),
        (api.get_preset, {"name": "b", "junk": 1}, "unknown field"),
        (api.list_presets, {"x": 1}, "unknown field"),
        (api.save_preset, {}, "'name' is missing"),
        (api.save_preset, {"preset": "x"}, "must be a JSON object"),
        (api.save_preset, {"preset": {"name": "b", "entries": [{"name": "a", "te": "1"}]}}, "entries[0].te: must be a number"),
        (api.save_preset, {"preset": {"name": "b", "entries": []}}, "1 to 100"),
        (api.save_preset, {"preset": {"name": "b", "entries": [{"name": "a"}]}, "name": "c"}, "not both"),
        (api.save_preset, {"name": "b", "prompt": 5}, "'prompt' must be a string"),
        (api.save_preset, {"name": "b", "prompt": "<lora:a:1>", "scale": float("nan")}, "finite"),
        (api.save_preset, {"name": "b", "prompt": "<lora:a:1>", "family": "sd15"}, "'family' must be one of"),
        (api.save_preset, {"name": "b", "prompt": "<lora:a:1>", "overwrite": "yes"}, "true or false"),
        (api.save_preset, {"name": "b", "prompt": "x" * 200_000}, "at most 100000"),
        (api.expand_for_generation, {}, "give 'name'"),
        (api.expand_for_generation, {"name": "b", "prompt": "x"}, "not both"),
        (api.expand_for_generation, {"prompt": "x", "scale": 2}, "'scale' goes with 'name'"),
        (api.expand_for_generation, {"name": "b", "scale": "2"}, "finite number"),
        (api.export_presets, {"names": "b"}, "non-empty list"),
        (api.import_presets, {"document": {"version": 1}, "mode": "merge"}, "'mode' must be"),
        (api.import_presets, {"document": {"version": 1, "presets": [{"name": "a:b", "entries": []}]}}, "contains ':'"),
        (api.import_presets, {"document": {"version": 3, "presets": []}}, "schema version 3"),
        (api.restore_backup, {}, "confirm"),
        (api.reset_store, {"confirm": "true"}, "true or false"),
    ],
)
def test_malformed_bodies_are_400(store: PresetStore, handler, body, text: str) -> None:
    status, out = handler(store, body)
    assert status == 400 and text in out["error"], out


def test_export_import_through_the_api(store: PresetStore, tmp_path: Path) -> None:
    api.save_preset(store, {"preset": preset_to_json(full_preset())})
    status, out = api.export_presets(store, {"names": ["brand"]})
    assert status == 200
    other = PresetStore(tmp_path / "other.json")
    assert api.import_presets(other, {"document": out["document"]}) == (
        200, {"added": ["brand"], "replaced": [], "renamed": {}, "unchanged": [], "block_presets": []},
    )  # fmt: skip
    changed = out["document"]
    changed["presets"][0]["scale"] = 0.1
    status, res = api.import_presets(other, {"document": changed})
    assert status == 409 and res["conflicts"] == ["brand"]
    status, res = api.import_presets(other, {"document": changed, "mode": "rename"})
    assert status == 200 and res["renamed"] == {"brand": "brand (2)"}
    assert api.export_presets(store, {"names": ["nope"]})[0] == 404


def test_broken_store_is_409_with_the_backup_offered(store: PresetStore) -> None:
    api.save_preset(store, {"name": "a", "prompt": "<lora:x:1>"})
    api.save_preset(store, {"name": "b", "prompt": "<lora:x:1>"})
    store.path.write_text("{oops")
    status, out = api.list_presets(store)
    assert status == 409 and out["backup_available"] and out["file"] == str(store.path) and "line 1, column 2" in out["error"]
    assert api.save_preset(store, {"name": "c", "prompt": "<lora:x:1>"})[0] == 409
    assert store.path.read_text() == "{oops"
    assert api.backup_info(store) == (200, {"exists": True, "usable": True, "presets": ["a"], "fault": None})
    status, out = api.restore_backup(store, {"confirm": True})
    assert status == 200 and Path(out["previous_file_kept_as"]).read_text() == "{oops"
    assert [p["name"] for p in api.list_presets(store)[1]["presets"]] == ["a"]
    store.path.write_text('{"version": 99, "presets": []}')
    status, out = api.get_preset(store, {"name": "a"})
    assert status == 409 and out["newer_schema"]
    status, out = api.reset_store(store, {"confirm": True})
    assert status == 200 and api.list_presets(store)[1]["presets"] == []
