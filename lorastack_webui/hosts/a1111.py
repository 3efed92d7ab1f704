"""AUTOMATIC1111 v1.10: LDM modules under their checkpoint names; the built-in's patches are network hooks."""

from __future__ import annotations

from modules import patches, sd_models

from lib_lorastack.engine import resolve_modules
from lib_lorastack.formats.targets import Family

from .. import builtin
from .base import HostAdapter

_PATCH_KEY = "lorastack_webui.install"


class A1111(HostAdapter):
    name = "a1111"
    label = "AUTOMATIC1111"
    hash_kind = "addnet"

    def __init__(self) -> None:
        self._release = None

    def family_of(self, sd_model) -> Family | None:
        if getattr(sd_model, "is_sdxl", False):
            return Family.SDXL
        if getattr(sd_model, "is_sd2", False):
            return Family.SD2
        if getattr(sd_model, "is_sd1", False):
            return Family.SD1
        return None

    def model_name(self, sd_model) -> str:
        return "SD3" if getattr(sd_model, "is_sd3", False) else type(sd_model).__name__

    def modules(self, sd_model, family):
        return resolve_modules(sd_model), None

    def install(self, host) -> None:
        self._release = host.release
        patches.patch(_PATCH_KEY, sd_models, "load_model_weights", self._load_model_weights)
        patches.patch(_PATCH_KEY, sd_models, "send_model_to_trash", self._send_model_to_trash)

    def uninstall(self) -> None:
        for field in ("load_model_weights", "send_model_to_trash"):
            if patches.original(_PATCH_KEY, sd_models, field) is not None:
                patches.undo(_PATCH_KEY, sd_models, field)

    def _load_model_weights(self, model, *args, **kwargs):
        self._release(model, restore=True)  # the new weights replace ours: our copies would be of the old checkpoint
        return patches.original(_PATCH_KEY, sd_models, "load_model_weights")(model, *args, **kwargs)

    def _send_model_to_trash(self, m, *args, **kwargs):
        if m is not None:
            self._release(m, restore=False)  # the weights are being discarded
        return patches.original(_PATCH_KEY, sd_models, "send_model_to_trash")(m, *args, **kwargs)

    def restore_builtin(self, sd_model) -> int:
        return builtin.restore_its_patches(sd_model)
