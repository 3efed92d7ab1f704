"""Presets in the WebUI: the store in the data folder, ``<lorastack:NAME>`` expanded before the job parses its tags,
and the panel's preset actions."""

from __future__ import annotations

import os

from lib_lorastack.host import preset_rows
from lib_lorastack.presets.errors import PresetError
from lib_lorastack.presets.expand import expand_prompt, has_preset_tags
from lib_lorastack.presets.resolve import LoraResolver
from lib_lorastack.presets.store import PresetStore

from .host import family_of, host

_stores: dict[str, PresetStore] = {}


def store() -> PresetStore:
    from modules import paths

    path = host().options().presets_file or os.path.join(paths.data_path, "lorastack-presets.json")
    if path not in _stores:
        _stores[path] = PresetStore(path)
    return _stores[path]


def resolver() -> LoraResolver:
    return LoraResolver(host().catalog(), host().hashes.cache)


def family_name() -> str | None:
    from .services import loaded_model

    model = loaded_model()
    family = family_of(model) if model is not None else None
    return None if family is None else family.value


def expand_for_panel(text: str) -> tuple[str, list[str]]:
    """The prompt with its ``<lorastack:NAME>`` tags expanded as the job expands them (the summary and the doctor
    see the stack the job applies), and the expansion's messages."""
    if not has_preset_tags(text):
        return text, []
    try:
        doc = store().load()
    except PresetError as e:
        return _strip(text), [f"presets: {e}"]
    expanded = expand_prompt(text, presets=doc, resolver=resolver(), family=family_name())
    return expanded.prompt, [d.message for d in expanded.diagnostics]


def expand_job_prompts(p) -> list[str]:
    """Replace every ``<lorastack:NAME[:SCALE]>`` of the job's prompts by the preset's LoRA tags (and its trigger
    words when the setting says so), so that the recorded prompt reproduces the image without the preset. Returns
    the messages (each names the preset and the fault)."""
    fields = [f for f in ("prompt", "hr_prompt") if _has(getattr(p, f, None))]
    if not fields:
        return []
    try:
        doc = store().load()
    except PresetError as e:
        doc, messages = None, [f"presets: {e}"]
    else:
        messages = []
    add = host().options().preset_triggers
    res, family = resolver(), family_name()
    negative = p.negative_prompt if isinstance(p.negative_prompt, str) else ""
    for name in fields:
        value = getattr(p, name)
        texts = value if isinstance(value, list) else [value]
        out = []
        for text in texts:
            if doc is None:
                out.append(_strip(text))
                continue
            expanded = expand_prompt(text, negative if name == "prompt" else "", presets=doc, add_triggers=add, resolver=res, family=family)
            out.append(expanded.prompt)
            if name == "prompt" and isinstance(p.negative_prompt, str):
                p.negative_prompt = negative = expanded.negative
            messages += [d.message for d in expanded.diagnostics if d.message not in messages]
        setattr(p, name, out if isinstance(value, list) else out[0])
    return messages


def _has(value) -> bool:
    if isinstance(value, list):
        return any(isinstance(v, str) and has_preset_tags(v) for v in value)
    return isinstance(value, str) and has_preset_tags(value)


def _strip(text: str) -> str:
    from lib_lorastack.presets.expand import PRESET_TAG_RE

    return PRESET_TAG_RE.sub("", text)


# --------------------------------------------------------------------- the panel's preset actions
def save_rows(name: str, state, prompt: str, triggers: str, *, overwrite: bool) -> list[str]:
    return preset_rows.save_rows(store(), name, state, prompt, triggers, overwrite=overwrite, resolver=resolver(), family=family_name())


def actions():
    from .panel import PresetActions

    return PresetActions(
        names=lambda: preset_rows.preset_names(store()),
        rows_of=lambda n: preset_rows.rows_of(store(), n, resolver(), family_name()),
        save=save_rows,
        delete=lambda n: store().delete(n),
        rename=lambda a, b: store().rename(a, b),
        duplicate=lambda a, b: preset_rows.duplicate(store(), a, b),
        export=lambda names: preset_rows.export_file(store(), names),
        import_file=lambda path: preset_rows.import_file(store(), path),
    )
