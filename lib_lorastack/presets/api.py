"""Request handlers for the preset API, free of any web framework: each takes the parsed JSON body (untrusted)
and returns ``(status_code, json_body)``. The WebUI's FastAPI routes only call these (docs/presets.md lists the
bodies). Errors are ``{"error": message, ...}`` with 400 (bad body), 404 (no such preset), 409 (conflict, or the
store file is broken), 503 (store locked)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..syntax.format import format_entry
from ..syntax.request import Diagnostic, StackEntry
from .errors import (
    PresetConflictError,
    PresetError,
    PresetFileError,
    PresetImportError,
    PresetLockTimeout,
    PresetNotFoundError,
    PresetSchemaError,
)
from .expand import expand_prompt
from .imports import export_document, merge_into, preset_from_prompt, read_preset_file
from .store import PresetStore, suggest
from .validate import FAMILIES, MAX_NUMBER, MAX_TEXT, document_to_json, name_fault, preset_from_json, preset_to_json

if TYPE_CHECKING:
    from .resolve import LoraResolver

Response = tuple[int, dict[str, Any]]
MAX_BODY_CHARS = 4 * 1024 * 1024
MAX_PROMPT = 100_000


class BadRequest(Exception):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field


def _error(status: int, message: str, **extra: Any) -> Response:
    return status, {"error": message, **extra}


def _handle(fn: Callable[[], Response]) -> Response:
    try:
        return fn()
    except BadRequest as e:
        return _error(400, e.message, **({"field": e.field} if e.field else {}))
    except PresetNotFoundError as e:
        return _error(404, str(e), name=e.name, suggestions=e.suggestions)
    except PresetConflictError as e:
        return _error(409, str(e), conflicts=e.names)
    except PresetFileError as e:
        return _error(409, str(e), file=e.path, backup_available=e.backup is not None, newer_schema=e.newer_schema)
    except PresetLockTimeout as e:
        return _error(503, str(e))
    except PresetSchemaError as e:
        return _error(400, str(e), field=e.where)
    except PresetImportError as e:
        return _error(400, str(e))
    except PresetError as e:
        return _error(400, str(e))


def _body(body: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(body).__name__}")
    unknown = [str(k)[:40] for k in body if k not in allowed]
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown[:5]))}; known: {', '.join(allowed)}")
    try:
        size = len(json.dumps(body))
    except (TypeError, ValueError):
        raise BadRequest("the body holds values that are not JSON") from None
    if size > MAX_BODY_CHARS:
        raise BadRequest(f"the body is {size} characters; at most {MAX_BODY_CHARS}")
    return body


def _name(body: dict[str, Any], key: str = "name") -> str:
    if key not in body:
        raise BadRequest(f"'{key}' is missing", key)
    fault = name_fault(body[key], what=key)
    if fault:
        raise BadRequest(fault, key)
    return body[key]


def _flag(body: dict[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"'{key}' must be true or false", key)
    return value


def _string(body: dict[str, Any], key: str, default: str = "", max_len: int = MAX_PROMPT) -> str:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadRequest(f"'{key}' must be a string", key)
    if len(value) > max_len:
        raise BadRequest(f"'{key}' has {len(value)} characters; at most {max_len}", key)
    return value


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not abs(value) <= MAX_NUMBER:
        raise BadRequest(f"'{key}' must be a finite number within ±{MAX_NUMBER:g}", key)
    return float(value)


def entry_json(entry: StackEntry) -> dict[str, Any]:
    out = {k: getattr(entry, k) for k in ("name", "te", "unet", "dyn", "lbw", "lbwe", "x", "start", "stop")}
    out["tag"] = format_entry(entry)
    return out


def diagnostic_json(d: Diagnostic) -> dict[str, Any]:
    return {"kind": d.kind, "severity": d.severity, "message": d.message, "span": list(d.span), "source": d.source}


def _summary(preset) -> dict[str, Any]:
    return {
        "name": preset.name,
        "description": preset.description,
        "family": preset.family,
        "scale": preset.scale,
        "loras": [e.name for e in preset.entries],
        "enabled": sum(e.enabled for e in preset.entries),
        "created": preset.created,
        "updated": preset.updated,
    }


# ---- handlers ----


def list_presets(store: PresetStore, body: Any = None) -> Response:
    """``{}`` → ``{"presets": [summary…], "block_presets": {NAME: vector}}``."""

    def run() -> Response:
        _body(body, ())
        doc = store.load()
        return 200, {"presets": [_summary(p) for p in doc.presets.values()], "block_presets": doc.block_presets}

    return _handle(run)


def get_preset(store: PresetStore, body: Any) -> Response:
    """``{"name"}`` → ``{"preset": {…}}`` (the full preset, as in the file)."""

    def run() -> Response:
        name = _name(_body(body, ("name",)))
        return 200, {"preset": preset_to_json(store.get(name))}

    return _handle(run)


def save_preset(store: PresetStore, body: Any, *, resolver: LoraResolver | None = None) -> Response:
    """``{"preset": {…}, "overwrite": false}``, or from a prompt: ``{"name", "prompt", "negative_prompt",
    "description", "family", "scale", "overwrite"}`` (with a resolver, each LoRA's hash and file are recorded).
    → 201 (created) or 200 (replaced) ``{"preset": {…}, "messages": […]}``."""

    def run() -> Response:
        data = _body(body, ("preset", "overwrite", "name", "prompt", "negative_prompt", "description", "family", "scale"))
        overwrite = _flag(data, "overwrite")
        messages: list[str] = []
        if "preset" in data:
            extra = [k for k in data if k not in ("preset", "overwrite")]
            if extra:
                raise BadRequest(f"give either 'preset' or 'name' + 'prompt', not both (also got {', '.join(extra)})")
            preset = preset_from_json(data["preset"])
        else:
            name = _name(data)
            if "prompt" not in data:
                raise BadRequest("give 'preset' (a preset object) or 'name' and 'prompt'", "prompt")
            family = data.get("family")
            if family is not None and family not in FAMILIES:
                raise BadRequest(f"'family' must be one of {', '.join(FAMILIES)} or null", "family")
            preset, messages = preset_from_prompt(
                name,
                _string(data, "prompt"),
                _string(data, "negative_prompt"),
                description=_string(data, "description", max_len=MAX_TEXT),
                family=family,
                scale=_number(data, "scale", 1.0),
                resolver=resolver,
                block_presets=store.load().block_presets,
            )
        existed = preset.name in store.load().presets
        stored = store.save(preset, overwrite=overwrite)
        return (200 if existed else 201), {"preset": preset_to_json(stored), "messages": messages}

    return _handle(run)


def delete_preset(store: PresetStore, body: Any) -> Response:
    """``{"name"}`` → ``{"deleted": name}``."""

    def run() -> Response:
        name = _name(_body(body, ("name",)))
        store.delete(name)
        return 200, {"deleted": name}

    return _handle(run)


def rename_preset(store: PresetStore, body: Any) -> Response:
    """``{"name", "new_name"}`` → ``{"preset": {…}}``."""

    def run() -> Response:
        data = _body(body, ("name", "new_name"))
        renamed = store.rename(_name(data), _name(data, "new_name"))
        return 200, {"preset": preset_to_json(renamed)}

    return _handle(run)


def expand_for_generation(
    store: PresetStore, body: Any, *, resolver: LoraResolver | None = None, family: str | None = None
) -> Response:
    """``{"prompt", "negative_prompt", "add_triggers"}`` (every ``<lorastack:…>`` in the prompt) or ``{"name",
    "scale", "add_triggers"}`` (one preset) → ``{"prompt", "negative_prompt", "presets", "entries",
    "diagnostics"}``. An unknown name is 404; problems inside a prompt are diagnostics (200)."""

    def run() -> Response:
        data = _body(body, ("prompt", "negative_prompt", "add_triggers", "name", "scale"))
        add = _flag(data, "add_triggers")
        negative = _string(data, "negative_prompt")
        doc = store.load()
        if "name" in data:
            if "prompt" in data:
                raise BadRequest("give either 'name' (one preset) or 'prompt', not both")
            name = _name(data)
            scale = _number(data, "scale", 1.0)
            if name not in doc.presets:
                raise PresetNotFoundError(name, suggest(name, doc.presets))
            prompt = f"<lorastack:{name}:{scale!r}>"
        elif "prompt" in data:
            if "scale" in data:
                raise BadRequest("'scale' goes with 'name'; in a prompt write <lorastack:NAME:SCALE>", "scale")
            prompt = _string(data, "prompt")
        else:
            raise BadRequest("give 'name' (one preset) or 'prompt' (with <lorastack:NAME> tags)")
        result = expand_prompt(prompt, negative, presets=doc, add_triggers=add, resolver=resolver, family=family)
        return 200, {
            "prompt": result.prompt,
            "negative_prompt": result.negative,
            "presets": list(result.presets),
            "entries": [entry_json(e) for e in result.entries],
            "diagnostics": [diagnostic_json(d) for d in result.diagnostics],
        }

    return _handle(run)


def export_presets(store: PresetStore, body: Any) -> Response:
    """``{"names": [...]}`` → ``{"document": {…}}`` (an export file's content, with the block presets used)."""

    def run() -> Response:
        data = _body(body, ("names",))
        names = data.get("names")
        if not isinstance(names, list) or not names or len(names) > 5000:
            raise BadRequest("'names' must be a non-empty list of preset names", "names")
        for i, n in enumerate(names):
            fault = name_fault(n)
            if fault:
                raise BadRequest(fault, f"names[{i}]")
        return 200, {"document": document_to_json(export_document(store.load(), names))}

    return _handle(run)


def import_presets(store: PresetStore, body: Any) -> Response:
    """``{"document": {…export file…}, "mode": "refuse"|"rename"|"overwrite"}`` → ``{"added", "replaced",
    "renamed", "unchanged", "block_presets"}``; any schema fault refuses the whole document (400)."""

    def run() -> Response:
        data = _body(body, ("document", "mode"))
        mode = data.get("mode", "refuse")
        if mode not in ("refuse", "rename", "overwrite"):
            raise BadRequest("'mode' must be 'refuse', 'rename' or 'overwrite'", "mode")
        if "document" not in data:
            raise BadRequest("'document' is missing", "document")
        incoming = read_preset_file(json.dumps(data["document"]).encode("utf-8"), source="the document")
        report = store.update(
            lambda doc: merge_into(doc, incoming.presets.values(), incoming.block_presets, mode=mode)
        )
        return 200, {
            "added": report.added,
            "replaced": report.replaced,
            "renamed": report.renamed,
            "unchanged": report.unchanged,
            "block_presets": report.block_presets,
        }

    return _handle(run)


def backup_info(store: PresetStore, body: Any = None) -> Response:
    """``{}`` → ``{"exists", "usable", "presets", "fault"}``: what ``<file>.bak`` holds, before restoring it."""

    def run() -> Response:
        _body(body, ())
        if not store.backup_path.exists():
            return 200, {"exists": False, "usable": False, "presets": [], "fault": None}
        try:
            doc = store.load_backup()
        except PresetFileError as e:
            return 200, {"exists": True, "usable": False, "presets": [], "fault": e.fault}
        return 200, {"exists": True, "usable": True, "presets": list(doc.presets), "fault": None}

    return _handle(run)


def restore_backup(store: PresetStore, body: Any) -> Response:
    """``{"confirm": true}`` → ``{"restored": true, "previous_file_kept_as": path|null}``."""

    def run() -> Response:
        if not _flag(_body(body, ("confirm",)), "confirm"):
            raise BadRequest("restoring replaces the current file (it is kept aside); send {\"confirm\": true}", "confirm")
        aside = store.restore_backup()
        return 200, {"restored": True, "previous_file_kept_as": str(aside) if aside else None}

    return _handle(run)


def reset_store(store: PresetStore, body: Any) -> Response:
    """``{"confirm": true}`` → ``{"reset": true, "previous_file_kept_as": path|null}`` (an empty store)."""

    def run() -> Response:
        if not _flag(_body(body, ("confirm",)), "confirm"):
            raise BadRequest("resetting starts an empty store (the current file is kept aside); send {\"confirm\": true}", "confirm")
        aside = store.reset()
        return 200, {"reset": True, "previous_file_kept_as": str(aside) if aside else None}

    return _handle(run)
