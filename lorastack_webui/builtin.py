"""The built-in Lora extension, when it is there: its LoRA index and hashes (reused), and its patches (undone)."""

from __future__ import annotations

import sys
from types import ModuleType

import torch


def networks() -> ModuleType | None:
    """The built-in's ``networks`` module, or None when the built-in is disabled."""
    module = sys.modules.get("networks")
    return module if module is not None and hasattr(module, "available_network_aliases") else None


def restore_its_patches(model: torch.nn.Module | None) -> int:
    """Put back whatever the built-in merged into ``model`` and drop its backups; it then applies nothing, since its
    list of loaded networks is empty. Returns the number of layers restored."""
    net = networks()
    if net is None:
        return 0
    net.loaded_networks.clear()
    restored = 0
    if model is None:
        return 0
    for module in model.modules():
        if getattr(module, "network_weights_backup", None) is None and not getattr(module, "network_current_names", ()):
            continue
        with torch.no_grad():
            net.network_restore_weights_from_backup(module)
        net.network_reset_cached_weight(module)
        restored += 1
    return restored
