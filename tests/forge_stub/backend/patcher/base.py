"""Forge's backend/patcher/base.py ModelPatcher: patch lists keyed by (filename, strength, strength_model, online)."""

import torch

from backend.patcher.lora import LoraLoader

CPU = torch.device("cpu")


class ModelPatcher:
    def __init__(self, model, load_device=None, offload_device=None):
        self.model, self.load_device, self.offload_device = model, load_device or CPU, offload_device or CPU
        self.lora_patches = {}
        if not hasattr(model, "lora_loader"):
            model.lora_loader = LoraLoader(model)
        self.lora_loader = model.lora_loader

    def clone(self):
        n = type(self).__new__(type(self))
        n.__dict__.update(self.__dict__)
        n.lora_patches = self.lora_patches.copy()
        return n

    def add_patches(self, *, filename, patches, strength_patch=1.0, strength_model=1.0, online_mode=False):
        identifier = (filename, strength_patch, strength_model, online_mode)
        keys = {k for k, _ in self.model.named_parameters()}
        this, added = {}, []
        for key, value in patches.items():
            if key in keys:
                this[key] = [[strength_patch, value, strength_model, None, None]]
                added.append(key)
        self.lora_patches[identifier] = this
        return added

    def has_online_lora(self):
        return any(online for (_, _, _, online) in self.lora_patches)

    def refresh_loras(self):
        self.lora_loader.refresh(lora_patches=self.lora_patches, offload_device=self.offload_device)


class UnetPatcher(ModelPatcher):
    pass


class CLIP:
    """backend/patcher/clip.py: the text encoders (a ModuleDict) and their patcher."""

    def __init__(self, cond_stage_model):
        self.cond_stage_model = cond_stage_model
        self.patcher = ModelPatcher(cond_stage_model)

    def clone(self):
        n = CLIP.__new__(CLIP)
        n.cond_stage_model = self.cond_stage_model
        n.patcher = self.patcher.clone()
        return n

    def add_patches(self, **kwargs):
        return self.patcher.add_patches(**kwargs)
