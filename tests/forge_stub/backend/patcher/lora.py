"""Forge's backend/patcher/lora.py: the patch math and the LoraLoader, one per model, shared by every clone.

A patch entry is ``[strength, (up, down, alpha), strength_model, offset, function]``. ``refresh`` does nothing while
the identifiers of the patch lists are unchanged (``loaded_hash``); otherwise it puts every backed-up Parameter
back, then merges in fp32 into new Parameters (keeping the old ones as backups), or for online patches hangs
them on the layer (``forge_online_loras``)."""

import torch


def merge_lora_to_weight(patches, weight, dtype=torch.float32):
    out = weight.to(dtype)
    for strength, (up, down, alpha), _strength_model, _offset, _fn in patches:
        rank = down.shape[0]
        delta = (up.to(dtype).flatten(1) @ down.to(dtype).flatten(1)).reshape(weight.shape) * (alpha / rank)
        out = out + strength * delta
    return out.to(weight.dtype)


def _parent(model, key):
    *path, leaf = key.split(".")
    obj = model
    for part in path:
        obj = getattr(obj, part)
    return obj, leaf


class LoraLoader:
    def __init__(self, model):
        self.model = model
        self.backup = {}
        self.online_backup = []
        self.loaded_hash = str([])
        self.merges = 0

    @torch.inference_mode()
    def refresh(self, lora_patches, offload_device=None, force_refresh=False):
        hashes = str(list(lora_patches.keys()))
        if hashes == self.loaded_hash and not force_refresh:
            return
        all_patches = {}
        for (_, _, _, online), patches in lora_patches.items():
            for key, current in patches.items():
                all_patches[(key, online)] = all_patches.get((key, online), []) + current
        for m in set(self.online_backup):
            del m.forge_online_loras
        self.online_backup = []
        for k, w in self.backup.items():
            parent, leaf = _parent(self.model, k)
            setattr(parent, leaf, w)
        self.backup = {}
        for (key, online), current in all_patches.items():
            parent, leaf = _parent(self.model, key)
            weight = getattr(parent, leaf)
            if online:
                if not hasattr(parent, "forge_online_loras"):
                    parent.forge_online_loras = {}
                parent.forge_online_loras[leaf] = current
                self.online_backup.append(parent)
                continue
            if key not in self.backup:
                self.backup[key] = weight
            setattr(parent, leaf, torch.nn.Parameter(merge_lora_to_weight(current, weight), requires_grad=False))
            self.merges += 1
        self.loaded_hash = hashes
