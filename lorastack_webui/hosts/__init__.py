"""Which WebUI this is, found by what its modules offer (never by a version string), and its adapter.

Each host's adapter is one small module here (``a1111``, ``forge``, ``neo``) with the same few functions
(``HostAdapter``); the rest of ``lorastack_webui`` (tags, panel, presets, X/Y/Z, API) is common to all three, since
Forge keeps A1111's ``modules`` surface.
"""

from __future__ import annotations

import importlib.util

from .base import HostAdapter

_adapter: HostAdapter | None = None
_detected = False


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def probe() -> tuple[str | None, str]:
    """``(host, what was found)``: "a1111", "forge", "neo", or None for a host we do not know."""
    from modules import sd_models

    has_reload = hasattr(sd_models, "forge_model_reload")
    has_weights = hasattr(sd_models, "load_model_weights")
    if not has_reload:
        if has_weights and hasattr(sd_models, "reload_model_weights"):
            return "a1111", "sd_models.load_model_weights/reload_model_weights, no forge_model_reload"
        return None, "neither A1111's sd_models.load_model_weights nor Forge's forge_model_reload"
    if not _has_module("backend.patcher.base"):
        return None, "sd_models.forge_model_reload without Forge's patchers (backend.patcher.base)"
    from backend.patcher.base import ModelPatcher

    if has_weights and hasattr(ModelPatcher, "refresh_loras") and _has_module("backend.patcher.lora"):
        return "forge", "Forge backend with LoraLoader patches (ModelPatcher.refresh_loras, sd_models.load_model_weights)"
    if not has_weights and hasattr(ModelPatcher, "patch_model") and hasattr(ModelPatcher, "unpatch_model"):
        return "neo", "Forge backend with weight patches (ModelPatcher.patch_model/unpatch_model, no load_model_weights)"
    return None, "a Forge backend whose LoRA patcher is neither Forge 2.0's (refresh_loras) nor Neo's (patch_model)"


def adapter() -> HostAdapter | None:
    """This host's adapter, or None (the extension then stands aside and the built-in keeps the tags)."""
    global _adapter, _detected
    if not _detected:
        _detected = True
        name, found = probe()
        if name == "a1111":
            from .a1111 import A1111

            _adapter = A1111()
        elif name == "forge":
            from .forge import Forge

            _adapter = Forge()
        elif name == "neo":
            from .neo import Neo

            _adapter = Neo()
        else:
            print(f"[LoRA Stack] unknown WebUI ({found}): LoRA Stack stays off, the built-in Lora extension handles the tags", flush=True)
    return _adapter
