"""What the panel shows of a LoRA: its base model (as the WebUI's cards decide it), its preferred weight and trigger
words (the built-in's user metadata ``<stem>.json`` beside the file, else the most frequent training tags)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..formats.files import trigger_words
from ..formats.targets import Family

MAX_SIDECAR_BYTES = 1 << 20


def family_of_metadata(metadata: dict[str, str]) -> Family | None:
    """The base model the cards assume: ``ss_base_model_version`` sdxl_… → SDXL, ``ss_v2`` → SD2, any other
    metadata → SD1, none → unknown."""
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return Family.SDXL
    if str(metadata.get("ss_v2", "")) == "True":
        return Family.SD2
    return Family.SD1 if metadata else None


def user_metadata(path: Path) -> dict:
    """The sidecar ``<stem>.json`` (description, activation text, preferred weight, …), or {} when absent or
    unreadable (it is the user's file: never an error that stops anything)."""
    sidecar = path.with_suffix(".json")
    try:
        if not sidecar.is_file() or sidecar.stat().st_size > MAX_SIDECAR_BYTES:
            return {}
        data = json.loads(sidecar.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def lora_defaults(path: Path, metadata: dict[str, str], *, top_tags: int = 3) -> tuple[float | None, str]:
    """(preferred weight or None, trigger words) for a LoRA file."""
    meta = user_metadata(path)
    weight = meta.get("preferred weight")
    try:
        weight = float(weight) if weight not in (None, "") else None
    except (TypeError, ValueError):
        weight = None
    if weight is not None and (weight == 0 or not math.isfinite(weight)):
        weight = None  # the WebUI's 0 means "not set"
    words = meta.get("activation text")
    if not isinstance(words, str) or not words.strip():
        words = ", ".join(trigger_words(metadata, top_tags))
    return weight, words.strip()
