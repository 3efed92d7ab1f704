"""Stand-in for the built-in Lora extension's networks.py: its index (stems, aliases, forbidden aliases, short
hashes) and, when it has applied LoRAs, weights merged in place with backups kept on the layers."""

import os
import re

import torch
from modules import shared
from safetensors import safe_open

from lib_lorastack.formats.hashes import compute_hashes
from lib_lorastack.formats.loader import load_lora
from lib_lorastack.formats.targets import Family

available_networks: dict = {}
available_network_aliases: dict = {}
forbidden_network_aliases: dict = {}
available_network_hash_lookup: dict = {}
loaded_networks: list = []


class NetworkOnDisk:
    def __init__(self, name, filename):
        self.name, self.filename = name, filename
        try:
            with safe_open(filename, "pt") as f:
                self.metadata = f.metadata() or {}
        except Exception:
            self.metadata = {}
        self.alias = self.metadata.get("ss_output_name", name)
        self.hash = self.shorthash = None
        self.set_hash(self.metadata.get("sshs_model_hash") or "")

    def set_hash(self, v):
        self.hash = v
        self.shorthash = v[:12]
        if self.shorthash:
            available_network_hash_lookup[self.shorthash] = self

    def read_hash(self):
        if not self.hash:
            self.set_hash(compute_hashes(self.filename).addnet)

    def get_alias(self):
        if shared.opts.data.get("lora_preferred_name") == "Filename" or self.alias.lower() in forbidden_network_aliases:
            return self.name
        return self.alias


def _natural(text):
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", text)]


def list_available_networks():
    available_networks.clear()
    available_network_aliases.clear()
    forbidden_network_aliases.clear()
    available_network_hash_lookup.clear()
    forbidden_network_aliases.update({"none": 1, "Addams": 1})
    folder = shared.cmd_opts.lora_dir
    for root, _dirs, files in sorted(os.walk(folder), key=lambda w: _natural(w[0])):
        for f in sorted(files, key=_natural):
            if os.path.splitext(f)[1].lower() not in (".safetensors", ".pt", ".ckpt"):
                continue
            name = os.path.splitext(f)[0]
            entry = NetworkOnDisk(name, os.path.join(root, f))
            available_networks[name] = entry
            if entry.alias in available_network_aliases:
                forbidden_network_aliases[entry.alias.lower()] = 1
            available_network_aliases[name] = entry
            available_network_aliases[entry.alias] = entry


def load_networks(names, te_multipliers, unet_multipliers):
    """Merges each LoRA's change into the layers it targets (the real one does it lazily in each layer's forward),
    keeping pristine copies on the layers as ``network_weights_backup``."""
    loaded_networks.clear()
    model = shared.sd_model
    modules = {n.replace(".wrapped", ""): m for n, m in model.named_modules()}
    for name, te, unet in zip(names, te_multipliers, unet_multipliers):
        entry = available_network_aliases.get(name)
        if entry is None:
            continue
        entry.read_hash()
        lora = load_lora(entry.filename, Family.SD1)
        loaded_networks.append((name, entry))
        for target, adapter in lora.modules.items():
            module = modules.get(target.module)
            if module is None:
                continue
            with torch.no_grad():
                if getattr(module, "network_weights_backup", None) is None:
                    module.network_weights_backup = module.weight.detach().clone()
                    module.network_bias_backup = None if module.bias is None else module.bias.detach().clone()
                strength = te if target.component.is_text_encoder else unet
                module.weight += strength * adapter.update(module.weight).weight.to(module.weight.dtype)
            module.network_current_names = ((name, te, unet, None),)


def network_restore_weights_from_backup(module):
    if getattr(module, "network_weights_backup", None) is None:
        return
    module.weight.copy_(module.network_weights_backup)
    if getattr(module, "network_bias_backup", None) is not None:
        module.bias.copy_(module.network_bias_backup)


def network_reset_cached_weight(module):
    module.network_current_names = ()
    module.network_weights_backup = None
    module.network_bias_backup = None
