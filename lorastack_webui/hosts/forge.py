"""lllyasviel's Forge 2.0 (``backend/``): the model is two patcher roots, our engine writes their weights in place.

Forge's built-in LoRA turns tags into patch lists on clones of ``forge_objects_original`` and merges them in
``memory_management.LoadedModel.model_load`` (``LoraLoader.refresh``). With LoRA Stack handling the tags, the
built-in adds nothing, so ``forge_objects_after_applying_lora`` stays the original patchers with no patch, the
loader's ``loaded_hash`` stays ``[]`` and it never merges, restores or replaces a weight of ours. Device moves
(``module.to``) keep each Parameter object and move its data, patched values included; our backups are ours.
"""

from __future__ import annotations

import sys

from lib_lorastack.engine.resolve import resolve_renamed
from lib_lorastack.formats.forge_names import attention_widths, our_name, translate_target
from lib_lorastack.formats.targets import Family

from .base import HostAdapter

# UNet storage the engine never writes into: packed 4-bit / GGUF blocks stay Forge's; their layers go online, the
# layer's own forward still dequantises (lib_lorastack/engine/packed.py)
PACKED_STORAGE = ("nf4", "fp4", "gguf")
_PATCH_KEY = "lorastack_webui.hosts.forge"


class Forge(HostAdapter):
    name = "forge"
    label = "Forge"
    hash_kind = "sha256"  # Forge's modules/hashes.sha256 ignores use_addnet_hash: whole-file sha256
    builtin_engine = "Forge's built-in LoRA"

    # ----------------------------------------------------------------- the model
    def family_of(self, sd_model) -> Family | None:
        """By what the model holds: its text encoders and the engine's flags (the SDXL refiner, with CLIP-G alone,
        is not an SDXL model for our targets)."""
        encoders = self._encoders(sd_model)
        if encoders is None:
            return None
        if getattr(sd_model, "is_sdxl", False) and {"clip_l", "clip_g"} <= encoders:
            return Family.SDXL
        if getattr(sd_model, "is_sd2", False) and "clip_h" in encoders:
            return Family.SD2
        if getattr(sd_model, "is_sd1", False) and "clip_l" in encoders:
            return Family.SD1
        flux = getattr(Family, "FLUX", None)
        if flux is not None and flux.supported and type(sd_model).__name__ == "Flux":
            return flux  # targets are Forge's own names (flux1.json): see ``modules``
        return None

    def model_name(self, sd_model) -> str:
        if getattr(sd_model, "is_sdxl", False):
            return "SDXL refiner"
        return {"StableDiffusion3": "SD3"}.get(type(sd_model).__name__, type(sd_model).__name__)

    @staticmethod
    def _encoders(sd_model) -> set[str] | None:
        original = getattr(sd_model, "forge_objects_original", None)
        clip = getattr(original, "clip", None)
        cond = getattr(clip, "cond_stage_model", None)
        return None if cond is None else set(dict(cond.named_children()))

    def modules(self, sd_model, family: Family):
        original = sd_model.forge_objects_original
        if family.value == "flux":
            out = resolve_renamed(original.unet.model, lambda n: n if n.startswith("diffusion_model.") else None)
            return resolve_renamed(original.clip.cond_stage_model, lambda n: n, out), None
        out = resolve_renamed(original.unet.model, lambda n: our_name(family, n))
        resolve_renamed(original.clip.cond_stage_model, lambda n: our_name(family, n), out)
        widths = attention_widths(out)
        return out, ((lambda t: translate_target(t, widths)) if widths else None)

    def _storage(self, sd_model) -> object:
        original = getattr(sd_model, "forge_objects_original", None)
        return getattr(getattr(getattr(original, "unet", None), "model", None), "storage_dtype", None)

    def _packed(self, sd_model) -> str | None:
        storage = self._storage(sd_model)
        return storage.lower() if isinstance(storage, str) and storage.lower() in PACKED_STORAGE else None

    def storage_note(self, sd_model) -> str | None:
        packed = self._packed(sd_model)
        if packed is not None:
            return f"UNet stored as {packed}: online (packed weights are never written)"
        storage = self._storage(sd_model)
        if "float8" in str(storage):
            return f"UNet stored as {str(storage).replace('torch.', '')}: online (a fused change would be rounded to 8 bits)"
        return None

    def mode_for(self, sd_model, mode: str) -> str:
        """fp8: fused → online (auto already goes online for fp8 weights); packed: online whatever the setting (the
        engine puts packed layers online in every mode; the rest of the model follows, so the job has one mode)."""
        if self._packed(sd_model) is not None:
            return "online"
        return "online" if mode == "fused" and self.storage_note(sd_model) else mode

    # ----------------------------------------------------------------- lifecycle
    def drops_replaced_models(self) -> bool:
        return True  # forge_model_reload unloads the previous model before it loads the next

    def install(self, host) -> None:
        """Before Forge drops its model (a checkpoint switch in ``forge_model_reload``, or *Unload*), our state of
        it goes first: our engine holds its modules, which would keep the old model alive while the next loads.
        ``processing`` imported ``forge_model_reload`` by name, so both names are wrapped."""
        from modules import patches, processing, sd_models

        self._host = host
        self._patched = []
        for owner in (sd_models, processing):
            if callable(getattr(owner, "forge_model_reload", None)):
                patches.patch(_PATCH_KEY, owner, "forge_model_reload", self._wrap_reload(owner))
                self._patched.append((owner, "forge_model_reload"))
        if callable(getattr(sd_models, "unload_model_weights", None)):
            patches.patch(_PATCH_KEY, sd_models, "unload_model_weights", self._wrap_unload(sd_models))
            self._patched.append((sd_models, "unload_model_weights"))

    def uninstall(self) -> None:
        from modules import patches

        for owner, field in getattr(self, "_patched", []):
            if patches.original(_PATCH_KEY, owner, field) is not None:
                patches.undo(_PATCH_KEY, owner, field)
        self._patched = []

    def _drop_all(self) -> None:
        session = self._host.session
        for key in session.model_keys():
            session.release(key, restore=False)  # the weights go with the model

    def _wrap_reload(self, owner):
        from modules import patches, sd_models

        def forge_model_reload(*args, **kwargs):
            data = sd_models.model_data
            if getattr(data, "forge_hash", None) != str(getattr(data, "forge_loading_parameters", None)):
                self._drop_all()
            return patches.original(_PATCH_KEY, owner, "forge_model_reload")(*args, **kwargs)

        return forge_model_reload

    def _wrap_unload(self, owner):
        from modules import patches

        def unload_model_weights(*args, **kwargs):
            self._drop_all()
            return patches.original(_PATCH_KEY, owner, "unload_model_weights")(*args, **kwargs)

        return unload_model_weights

    def restore_builtin(self, sd_model) -> int:
        """Undo the built-in's merge (its loader restores its backups), drop its patched clones and its cache key,
        so that it neither merges again over our weights nor skips work when it handles tags again."""
        original = getattr(sd_model, "forge_objects_original", None)
        if original is None:
            return 0
        undone = 0
        for patcher in (original.unet, getattr(original.clip, "patcher", None)):
            loader = getattr(patcher, "lora_loader", None)  # one per model, shared by every clone
            if loader is None or loader.loaded_hash == str([]):
                continue
            undone += len(loader.backup) + len(set(loader.online_backup))
            loader.refresh(lora_patches={}, offload_device=patcher.offload_device)
        self._reset_builtin_state(sd_model, original)
        return undone

    @staticmethod
    def _reset_builtin_state(sd_model, original) -> None:
        sd_model.forge_objects_after_applying_lora = original.shallow_copy()
        sd_model.current_lora_hash = str([])
        networks = sys.modules.get("networks")
        if networks is not None and hasattr(networks, "loaded_networks"):
            networks.loaded_networks.clear()
