"""Stand-in for Forge's sd_forge_lora networks.py: its index (whole-file sha256 short hashes, as Forge's
modules/hashes ignores the addnet option) and load_networks, which skips all work while ``current_lora_hash`` is
unchanged and otherwise adds the LoRAs' patches to clones of the original patchers (merged later, when the
patchers load)."""

import os
import re

import torch
from modules import sd_models, shared
from safetensors import safe_open

from lib_lorastack.formats.hashes import compute_hashes
from lib_lorastack.formats.loader import load_lora
from lib_lorastack.formats.targets import Family

available_networks: dict = {}
available_network_aliases: dict = {}
forbidden_network_aliases: dict = {}
available_network_hash_lookup: dict = {}
loaded_networks: list = []
calls = {"load_networks": 0}


class NetworkOnDisk:
    def __init__(self, name, filename):
        self.name, self.filename = name, filename
        try:
            with safe_open(filename, "pt") as f:
                self.metadata = f.metadata() or {}
        except Exception:
            self.metadata = {}
        self.alias = self.metadata.get("ss_output_name", name)
        self.set_hash(self.metadata.get("sshs_model_hash") or compute_hashes(filename).sha256)

    def set_hash(self, v):
        self.hash = v
        self.shorthash = v[:12]
        if self.shorthash:
            available_network_hash_lookup[self.shorthash] = self

    def read_hash(self):
        pass

    def get_alias(self):
        if shared.opts.data.get("lora_preferred_name") == "Filename" or self.alias.lower() in forbidden_network_aliases:
            return self.name
        return self.alias


def _natural(text):
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", text)]


def list_available_networks():
    for d in (available_networks, available_network_aliases, forbidden_network_aliases, available_network_hash_lookup):
        d.clear()
    forbidden_network_aliases.update({"none": 1, "Addams": 1})
    for root, _dirs, files in sorted(os.walk(shared.cmd_opts.lora_dir), key=lambda w: _natural(w[0])):
        for f in sorted(files, key=_natural):
            if os.path.splitext(f)[1].lower() != ".safetensors":
                continue
            name = os.path.splitext(f)[0]
            entry = NetworkOnDisk(name, os.path.join(root, f))
            available_networks[name] = entry
            if entry.alias in available_network_aliases:
                forbidden_network_aliases[entry.alias.lower()] = 1
            available_network_aliases[name] = entry
            available_network_aliases[entry.alias] = entry


def _forge_key(module: str) -> str:
    """The patch key Forge's key map gives an SD1 LoRA module (its diffusers→LDM and kohya maps, SD1 only here)."""
    if module.startswith("model.diffusion_model."):
        return module[len("model."):] + ".weight"
    return "clip_l." + module[len("cond_stage_model."):] + ".weight"


def _patches(filename):
    lora = load_lora(filename, Family.SD1)
    unet, clip = {}, {}
    for target, adapter in lora.modules.items():
        up, down, alpha = adapter.up, adapter.down, adapter.alpha
        value = (up, down, float(alpha) if alpha is not None else float(down.shape[0]))
        (clip if target.component.is_text_encoder else unet)[_forge_key(target.module)] = value
    return unet, clip


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None):
    calls["load_networks"] += 1
    current_sd = sd_models.model_data.get_sd_model()
    loaded_networks.clear()
    on_disk = [available_network_aliases.get(n) for n in names]
    for name, entry in zip(names, on_disk):
        entry.read_hash()  # a missing name fails here, every LoRA of the prompt with it (Forge issue #2957)
        loaded_networks.append((name, entry))
    online = current_sd.forge_objects.unet.model.storage_dtype not in (torch.float32, torch.float16, torch.bfloat16)
    targets = [[e.filename, u, t, online] for e, u, t in zip(on_disk, unet_multipliers, te_multipliers)]
    if current_sd.current_lora_hash == str(targets):
        return
    current_sd.current_lora_hash = str(targets)
    unet, clip = current_sd.forge_objects_original.unet, current_sd.forge_objects_original.clip
    for filename, u, t, online in targets:
        unet_patches, clip_patches = _patches(filename)
        unet, clip = unet.clone(), clip.clone()
        add_patches(unet, unet_patches, u, filename, online)
        add_patches(clip, clip_patches, t, filename, online)
    current_sd.forge_objects.unet, current_sd.forge_objects.clip = unet, clip
    current_sd.forge_objects_after_applying_lora = current_sd.forge_objects.shallow_copy()


def add_patches(patcher, patches, strength, filename, online) -> None:
    """Forge's ``ModelPatcher.add_patches`` takes keyword-only arguments (Neo's stand-in overrides this)."""
    patcher.add_patches(filename=filename, patches=patches, strength_patch=strength, online_mode=online)
