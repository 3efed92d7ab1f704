"""The panel's preset actions, host-free: a preset's LoRAs as panel rows (found by hash first), rows saved as a
preset, duplicate, export to a file, import from one."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace

from ..presets.errors import PresetError
from ..presets.expand import PRESET_TAG_RE, expand_preset
from ..presets.imports import export_document, merge_into, preset_from_prompt, read_preset_file
from ..presets.resolve import LoraResolver
from ..presets.store import PresetStore
from ..presets.validate import document_to_json
from ..syntax import format_entry, parse_prompt
from ..syntax.rewrite import _cut
from .panel import PanelState, Row, panel_tags, prompt_rows


def preset_names(store: PresetStore) -> list[str]:
    try:
        return list(store.load().presets)
    except PresetError:
        return []


def rows_of(store: PresetStore, name: str, resolver: LoraResolver | None, family: str | None) -> tuple[list[Row], list[str]]:
    preset = store.get(name)
    ex = expand_preset(preset, resolver=resolver, family=family, block_presets=store.load().block_presets)
    rows = [Row(e.name, e.te, e.unet, e.te == e.unet, e.lbw or "", e.start, e.stop) for e in ex.entries]
    return rows, [d.message for d in ex.diagnostics]


def remove_preset_tags(prompt: str, name: str) -> tuple[str, int]:
    """The prompt without its ``<lorastack:NAME>`` / ``<lorastack:NAME:SCALE>`` tags (separators tidied as for a
    LoRA tag); how many there were. Loading a preset into the rows while its tag stays would stack it twice."""
    spans = [m.span() for m in PRESET_TAG_RE.finditer(prompt) if m.group(1).split(":")[0].strip() == name]
    for start, end in reversed(spans):
        prompt, _cursor = _cut(prompt, start, end)
    return prompt, len(spans)


def save_rows(
    store: PresetStore, name: str, state: PanelState, prompt: str, triggers: str, *,
    overwrite: bool, resolver: LoraResolver | None, family: str | None,
) -> list[str]:  # fmt: skip
    """Save what the rows apply (the prompt's tags and the panel's own rows) under ``name``."""
    entries = [r.entry() for r in prompt_rows(prompt)]
    tags, _notes = panel_tags(state, prompt)
    entries += [parse_prompt("<lora:" + ":".join(t) + ">").entries[0] for t in tags]
    if not entries:
        raise PresetError("there is no LoRA to save: add rows or tags first")
    text = " ".join(format_entry(e) for e in entries) + (f" {triggers}" if triggers.strip() else "")
    preset, messages = preset_from_prompt(name, text, family=family, resolver=resolver, block_presets=store.load().block_presets)
    store.save(preset, overwrite=overwrite)
    return messages


def duplicate(store: PresetStore, name: str, new: str) -> None:
    store.save(replace(store.get(name), name=new, created=None, updated=None), overwrite=False)


def export_file(store: PresetStore, names: list[str]) -> str:
    """The named presets (and the block presets they use) in a JSON file to download; its path."""
    doc = export_document(store.load(), names)
    handle, path = tempfile.mkstemp(prefix="lorastack-presets-", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        json.dump(document_to_json(doc), f, indent=2, ensure_ascii=False)
    return path


def import_file(store: PresetStore, path: str) -> list[str]:
    """New names are added; a name that exists with other content is stored as "NAME (2)"."""
    with open(path, "rb") as f:
        incoming = read_preset_file(f.read(), source=os.path.basename(path))
    report = store.update(lambda doc: merge_into(doc, incoming.presets.values(), incoming.block_presets, mode="rename"))
    parts = [f"{label}: {', '.join(map(str, names))}" for label, names in (("added", report.added), ("unchanged", report.unchanged)) if names]
    return [f"imported {os.path.basename(path)}: " + ("; ".join(parts) or "nothing new")]
