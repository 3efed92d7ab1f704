"""The preset schema: checks names and every field of data that comes from a file or an API body, and converts
between ``Preset``/``PresetDocument`` and plain JSON values. Nothing here evaluates or unpickles anything."""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import datetime
from typing import Any

from ..syntax.lbw import is_vector, vector_fault
from ..syntax.tags import TAG_RE
from .errors import PresetNameError, PresetSchemaError
from .model import EMPTY_SHA256, FAMILIES, FORMAT_NAME, SCHEMA_VERSION, Preset, PresetDocument, PresetEntry

MAX_NAME = 100
MAX_LORA_NAME = 255
MAX_TEXT = 4000
MAX_SPEC = 2000
MAX_ENTRIES = 100
MAX_PRESETS = 5000
MAX_BLOCK_PRESETS = 1000
MAX_NUMBER = 1000.0
MAX_STEP = 1_000_000
# Characters that break the tag syntax (``<lorastack:NAME:SCALE>``) or look like a path.
_NAME_FORBIDDEN = set(':<>/\\')
_JOINERS = "\u200c\u200d"  # needed by some scripts and emoji sequences; other format characters can spoof text
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HEX_SHORT = re.compile(r"[0-9a-fA-F]{8,64}")

ENTRY_KEYS = ("name", "te", "unet", "sha256", "addnet", "file", "alias", "dyn", "lbw", "lbwe", "x", "start", "stop", "enabled")
PRESET_KEYS = ("name", "description", "family", "scale", "triggers", "negative_triggers", "created", "updated", "entries")
DOCUMENT_KEYS = ("format", "version", "presets", "block_presets")


def _bad_char(text: str, *, allow_newlines: bool = False) -> str | None:
    for ch in text:
        if allow_newlines and ch in "\n\r\t":
            continue
        if ch in _JOINERS:
            continue
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            return f"control or invisible character U+{ord(ch):04X}"
    return None


def name_fault(name: Any, *, what: str = "name", max_len: int = MAX_NAME, extra_forbidden: str = "") -> str | None:
    """Why ``name`` cannot name a preset (None when it can). Unicode letters and spaces inside are fine."""
    if not isinstance(name, str):
        return f"{what} must be a string, got {type(name).__name__}"
    if not name:
        return f"{what} is empty"
    if len(name) > max_len:
        return f"{what} has {len(name)} characters; at most {max_len}"
    if name != name.strip():
        return f"{what} {name!r} starts or ends with a space"
    bad = _bad_char(name)
    if bad:
        return f"{what} {name!r} contains a {bad}"
    forbidden = sorted((_NAME_FORBIDDEN | set(extra_forbidden)) & set(name))
    if forbidden:
        return f"{what} {name!r} contains {' '.join(repr(c) for c in forbidden)} (not allowed: : < > / \\{' ' + extra_forbidden if extra_forbidden else ''})"
    if set(name) <= {"."}:
        return f"{what} {name!r} is only dots"
    return None


def check_name(name: Any, *, what: str = "preset name") -> str:
    fault = name_fault(name, what=what)
    if fault:
        raise PresetNameError(fault)
    return name


def block_preset_name_fault(name: Any) -> str | None:
    return name_fault(name, what="block preset name", extra_forbidden=",=#")


# ---- field readers: each raises PresetSchemaError(where, fault) ----


def _number(value: Any, where: str, *, limit: float = MAX_NUMBER) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PresetSchemaError(where, f"must be a number, got {_show(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise PresetSchemaError(where, f"must be a finite number, got {value!r}")
    if abs(number) > limit:
        raise PresetSchemaError(where, f"{number:g} is out of range (-{limit:g} … {limit:g})")
    return number


def _integer(value: Any, where: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise PresetSchemaError(where, f"must be a whole number, got {_show(value)}")
    if not minimum <= value <= MAX_STEP:
        raise PresetSchemaError(where, f"{value} is out of range ({minimum} … {MAX_STEP})")
    return value


def _text(value: Any, where: str, *, max_len: int = MAX_TEXT, no_tags: bool = False) -> str:
    if not isinstance(value, str):
        raise PresetSchemaError(where, f"must be a string, got {_show(value)}")
    if len(value) > max_len:
        raise PresetSchemaError(where, f"has {len(value)} characters; at most {max_len}")
    bad = _bad_char(value, allow_newlines=True)
    if bad:
        raise PresetSchemaError(where, f"contains a {bad}")
    if no_tags and TAG_RE.search(value):
        raise PresetSchemaError(where, f"contains a tag ({TAG_RE.search(value).group(0)!r}); LoRAs belong in the entries")
    return value


def _optional(data: dict, key: str, where: str, reader, **kw):
    value = data.get(key)
    return None if value is None else reader(value, f"{where}.{key}", **kw)


def _lora_name(value: Any, where: str) -> str:
    fault = name_fault(value, what="", max_len=MAX_LORA_NAME)
    if fault:
        raise PresetSchemaError(where, fault.strip())
    return value


def _sha256(value: Any, where: str) -> str | None:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise PresetSchemaError(where, f"must be 64 hexadecimal digits, got {_show(value)}")
    value = value.lower()
    return None if value == EMPTY_SHA256 else value  # the empty file's hash identifies nothing


def _addnet(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _HEX_SHORT.fullmatch(value):
        raise PresetSchemaError(where, f"must be 8 to 64 hexadecimal digits, got {_show(value)}")
    return value.lower()


def _spec(value: Any, where: str) -> str:
    value = _text(value, where, max_len=MAX_SPEC)
    if not value or any(c in value for c in ":<>") or value != value.strip():
        raise PresetSchemaError(where, f"{value!r} is not a block preset name or vector (no ':', '<', '>', outer spaces)")
    if is_vector(value):
        fault = vector_fault(value)
        if fault:
            raise PresetSchemaError(where, fault)
    elif "," in value:
        raise PresetSchemaError(where, f"block vector has {value.count(',') + 1} values; LBW vectors have 12, 17, 20 or 26")
    return value


def _elemental(value: Any, where: str) -> str:
    fault = name_fault(value, what="", extra_forbidden=",")
    if fault:
        raise PresetSchemaError(where, fault.strip())
    return value


def _time(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > 64:
        raise PresetSchemaError(where, f"must be an ISO 8601 time string, got {_show(value)}")
    try:
        datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise PresetSchemaError(where, f"{value!r} is not an ISO 8601 time (e.g. 2025-01-31T12:00:00+00:00)") from None
    return value


def _object(value: Any, where: str, allowed: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise PresetSchemaError(where, f"must be a JSON object, got {_show(value)}")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise PresetSchemaError(where, f"unknown field(s) {', '.join(repr(str(k)[:40]) for k in unknown[:5])}; known: {', '.join(allowed)}")
    return value


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:40] + ("…" if len(value) > 40 else ""))
    if value is None or isinstance(value, bool | int | float):
        return repr(value) if value is not None else "null"
    return type(value).__name__ if not isinstance(value, dict | list) else ("an object" if isinstance(value, dict) else "a list")


# ---- entries, presets, documents ----


def entry_from_json(value: Any, where: str = "entry") -> PresetEntry:
    data = _object(value, where, ENTRY_KEYS)
    if "name" not in data:
        raise PresetSchemaError(where, "has no 'name'")
    name = _lora_name(data["name"], f"{where}.name")
    te = _number(data["te"], f"{where}.te") if data.get("te") is not None else 1.0
    unet = _number(data["unet"], f"{where}.unet") if data.get("unet") is not None else te
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise PresetSchemaError(f"{where}.enabled", f"must be true or false, got {_show(enabled)}")
    start = _optional(data, "start", where, _integer, minimum=0)
    stop = _optional(data, "stop", where, _integer, minimum=0)
    return PresetEntry(
        name=name,
        te=te,
        unet=unet,
        sha256=_optional(data, "sha256", where, _sha256),
        addnet=_optional(data, "addnet", where, _addnet),
        file=_optional(data, "file", where, _lora_name),
        alias=_optional(data, "alias", where, _lora_name),
        dyn=_optional(data, "dyn", where, _integer, minimum=1),
        lbw=_optional(data, "lbw", where, _spec),
        lbwe=_optional(data, "lbwe", where, _elemental),
        x=_optional(data, "x", where, _number),
        start=start,
        stop=stop,
        enabled=enabled,
    )


def entry_to_json(entry: PresetEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"name": entry.name, "te": entry.te, "unet": entry.unet}
    for key in ("sha256", "addnet", "file", "alias", "dyn", "lbw", "lbwe", "x", "start", "stop"):
        value = getattr(entry, key)
        if value is not None:
            out[key] = value
    out["enabled"] = entry.enabled
    return out


def preset_from_json(value: Any, where: str = "preset") -> Preset:
    """A ``Preset`` from untrusted JSON data; ``PresetSchemaError`` names the preset and the field at fault."""
    if not isinstance(value, dict):
        raise PresetSchemaError(where, f"must be a JSON object, got {_show(value)}")
    if "name" not in value:
        raise PresetSchemaError(where, "has no 'name'")
    fault = name_fault(value["name"], what="name")
    if fault:
        raise PresetSchemaError(where, fault)
    where = f"{where} {value['name']!r}"
    data = _object(value, where, PRESET_KEYS)
    raw_entries = data.get("entries")
    if not isinstance(raw_entries, list):
        raise PresetSchemaError(f"{where}.entries", f"must be a list of LoRAs, got {_show(raw_entries)}")
    if not 1 <= len(raw_entries) <= MAX_ENTRIES:
        raise PresetSchemaError(f"{where}.entries", f"has {len(raw_entries)} LoRAs; a preset holds 1 to {MAX_ENTRIES}")
    entries = tuple(entry_from_json(e, f"{where}.entries[{i}]") for i, e in enumerate(raw_entries))
    family = data.get("family")
    if family is not None and family not in FAMILIES:
        raise PresetSchemaError(f"{where}.family", f"must be one of {', '.join(FAMILIES)} or null, got {_show(family)}")
    return Preset(
        name=data["name"],
        entries=entries,
        description=_text(data.get("description", ""), f"{where}.description"),
        triggers=_text(data.get("triggers", ""), f"{where}.triggers", no_tags=True),
        negative_triggers=_text(data.get("negative_triggers", ""), f"{where}.negative_triggers", no_tags=True),
        scale=_number(data["scale"], f"{where}.scale") if data.get("scale") is not None else 1.0,
        family=family,
        created=_optional(data, "created", where, _time),
        updated=_optional(data, "updated", where, _time),
    )


def check_preset(preset: Preset) -> Preset:
    """Run a ``Preset`` built in code (CLI, imports) through the schema."""
    return preset_from_json(preset_to_json(preset))


def preset_to_json(preset: Preset) -> dict[str, Any]:
    out: dict[str, Any] = {"name": preset.name}
    if preset.description:
        out["description"] = preset.description
    out["family"] = preset.family
    out["scale"] = preset.scale
    out["triggers"] = preset.triggers
    out["negative_triggers"] = preset.negative_triggers
    out["created"] = preset.created
    out["updated"] = preset.updated
    out["entries"] = [entry_to_json(e) for e in preset.entries]
    return out


def block_presets_from_json(value: Any, where: str = "block_presets") -> dict[str, str]:
    if not isinstance(value, dict):
        raise PresetSchemaError(where, f"must be a JSON object of NAME: vector, got {_show(value)}")
    if len(value) > MAX_BLOCK_PRESETS:
        raise PresetSchemaError(where, f"has {len(value)} block presets; at most {MAX_BLOCK_PRESETS}")
    out: dict[str, str] = {}
    for name, vector in value.items():
        fault = block_preset_name_fault(name)
        if fault:
            raise PresetSchemaError(where, fault)
        out[name] = block_vector(vector, f"{where}[{name!r}]")
    return out


def block_vector(value: Any, where: str) -> str:
    vector = _text(value, where, max_len=MAX_SPEC)
    if not is_vector(vector):
        raise PresetSchemaError(where, f"has {vector.count(',') + 1} values; a block preset needs 12, 17, 20, 26 or 61")
    fault = vector_fault(vector)
    if fault:
        raise PresetSchemaError(where, fault)
    return vector


class NewerSchemaError(PresetSchemaError):
    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(
            "version", f"schema version {version} was written by a newer lorastack (this one reads up to {SCHEMA_VERSION})"
        )


def document_from_json(value: Any) -> PresetDocument:
    """A whole store or export file. A newer schema version raises ``NewerSchemaError`` (never truncated)."""
    if not isinstance(value, dict):
        raise PresetSchemaError("file", f"must be a JSON object, got {_show(value)}")
    if "format" in value and value["format"] != FORMAT_NAME:
        raise PresetSchemaError("format", f"is {_show(value['format'])}, not {FORMAT_NAME!r}: not a lorastack preset file")
    version = value.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise PresetSchemaError("version", f"must be a whole number (the schema version), got {_show(version)}")
    if version > SCHEMA_VERSION:
        raise NewerSchemaError(version)  # before any other check: a newer file may hold fields we do not know
    data = _object(value, "file", DOCUMENT_KEYS)
    if version < 1:
        raise PresetSchemaError("version", f"{version} is not a schema version")
    raw = data.get("presets", [])
    if not isinstance(raw, list):
        raise PresetSchemaError("presets", f"must be a list, got {_show(raw)}")
    if len(raw) > MAX_PRESETS:
        raise PresetSchemaError("presets", f"has {len(raw)} presets; at most {MAX_PRESETS}")
    doc = PresetDocument()
    for i, item in enumerate(raw):
        preset = preset_from_json(item, f"presets[{i}]")
        if preset.name in doc.presets:
            raise PresetSchemaError(f"presets[{i}]", f"a second preset named {preset.name!r}")
        doc.presets[preset.name] = preset
    doc.block_presets = block_presets_from_json(data.get("block_presets", {}))
    return doc


def document_to_json(doc: PresetDocument) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "version": SCHEMA_VERSION,
        "presets": [preset_to_json(p) for p in doc.presets.values()],
        "block_presets": dict(doc.block_presets),
    }
