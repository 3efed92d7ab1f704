"""Forge Neo 2.26: the same two patcher roots as Forge, ComfyUI-style weight patches (``patches``/``backup``/
``patches_uuid``, merged by ``ModelPatcher.load`` when ``model.current_weight_patches_uuid`` differs).

With LoRA Stack handling the tags the original patchers carry no patch and keep their uuid, so Neo never
unpatches (which would put its backups over our weights) or merges. A checkpoint switch goes through
``forge_model_reload`` (no ``load_model_weights`` in Neo), which unloads the old model first.
"""

from __future__ import annotations

from .forge import Forge


class Neo(Forge):
    name = "neo"
    label = "Forge Neo"
    builtin_engine = "Neo's built-in LoRA"

    def restore_builtin(self, sd_model) -> int:
        original = getattr(sd_model, "forge_objects_original", None)
        if original is None:
            return 0
        undone = 0
        for patcher in (original.unet, getattr(original.clip, "patcher", None)):
            backup = getattr(patcher, "backup", None)  # shared by the built-in's clones
            if backup:
                undone += len(backup)
                patcher.unpatch_model(unpatch_weights=True)
        self._reset_builtin_state(sd_model, original)
        return undone
