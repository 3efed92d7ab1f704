"""Presets: named LoRA stacks (by hash, with file name and alias as fallbacks), stored in one JSON file.

The WebUI glue calls: ``PresetStore(path)`` (load/save/delete/restore), ``expand_prompt`` (``<lorastack:NAME>``
tags), ``LoraResolver(catalog, hash_cache)`` (finding files by hash), the handlers in ``api`` and the importers in
``imports``. No global state: every path is given by the caller. docs/presets.md describes the file and the API.
"""

from .errors import (
    PresetConflictError,
    PresetError,
    PresetFileError,
    PresetImportError,
    PresetLockTimeout,
    PresetNameError,
    PresetNotFoundError,
    PresetSchemaError,
)
from .expand import ExpandedPrompt, PresetExpansion, expand_preset, expand_prompt, has_preset_tags
from .model import SCHEMA_VERSION, Preset, PresetDocument, PresetEntry
from .store import PresetStore, default_store_path

__all__ = [
    "SCHEMA_VERSION",
    "ExpandedPrompt",
    "Preset",
    "PresetConflictError",
    "PresetDocument",
    "PresetEntry",
    "PresetError",
    "PresetExpansion",
    "PresetFileError",
    "PresetImportError",
    "PresetLockTimeout",
    "PresetNameError",
    "PresetNotFoundError",
    "PresetSchemaError",
    "PresetStore",
    "default_store_path",
    "expand_preset",
    "expand_prompt",
    "has_preset_tags",
]
