"""Neo's backend/patcher/base.py ModelPatcher (the "Neo-C" engine): patches merged in place by ``load``, backups
of the pristine weights shared by every clone, ``patches_uuid`` telling the loader whether to re-merge."""

import collections
import uuid

import torch

from backend.patcher.lora import merge_lora_to_weight

Dimension = collections.namedtuple("Dimension", ["weight", "inplace_update"])


def _parent(model, key):
    *path, leaf = key.split(".")
    obj = model
    for part in path:
        obj = getattr(obj, part)
    return obj, leaf

CPU = torch.device("cpu")


class ModelPatcher:
    def __init__(self, model, load_device=None, offload_device=None):
        self.model, self.load_device, self.offload_device = model, load_device or CPU, offload_device or CPU
        self.patches = {}
        self.backup = {}
        self.patches_uuid = uuid.uuid4()
        if not hasattr(model, "current_weight_patches_uuid"):
            model.current_weight_patches_uuid = None
            model.merges = 0

    def clone(self):
        n = type(self).__new__(type(self))
        n.__dict__.update(self.__dict__)
        n.patches = {k: list(v) for k, v in self.patches.items()}
        n.backup = self.backup  # shared, as in Neo
        return n

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0, *, filename=None, online_mode=None):
        keys = {k for k, _ in self.model.named_parameters()}
        added = []
        for key, value in patches.items():
            if key in keys:
                self.patches.setdefault(key, []).append((strength_patch, value, strength_model, None, None, bool(online_mode)))
                added.append(key)
        self.patches_uuid = uuid.uuid4()
        return added

    @torch.inference_mode()
    def load(self, device_to=None):
        for key, current in self.patches.items():
            parent, leaf = _parent(self.model, key)
            weight = getattr(parent, leaf)
            if key not in self.backup:
                self.backup[key] = Dimension(weight.detach().clone(), True)
            merged = merge_lora_to_weight([c[:5] for c in current], weight)
            weight.copy_(merged)
            self.model.merges += 1
        self.model.current_weight_patches_uuid = self.patches_uuid

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        self.load(device_to)
        return self.model

    @torch.inference_mode()
    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if unpatch_weights:
            for key, bk in list(self.backup.items()):
                parent, leaf = _parent(self.model, key)
                getattr(parent, leaf).copy_(bk.weight)
            self.model.current_weight_patches_uuid = None
            self.backup.clear()


class UnetPatcher(ModelPatcher):
    pass


class CLIP:
    def __init__(self, cond_stage_model):
        self.cond_stage_model = cond_stage_model
        self.patcher = ModelPatcher(cond_stage_model)

    def clone(self):
        n = CLIP.__new__(CLIP)
        n.cond_stage_model = self.cond_stage_model
        n.patcher = self.patcher.clone()
        return n

    def add_patches(self, *args, **kwargs):
        return self.patcher.add_patches(*args, **kwargs)
