"""backend/loader.py forge_loader: the model's parts built from a checkpoint in Forge's names
(``diffusion_model.…`` → the UNet's KModel, ``clip_l.…`` → the JointTextEncoder), UNet fp32, text encoder fp16
(Forge's choices on a CPU). ``sd3.`` in the checkpoint's first key makes an SD3-like engine."""

import torch

from backend.diffusion_engine.base import ForgeObjects
from backend.diffusion_engine.sd15 import StableDiffusion, StableDiffusion3
from backend.operations import forge_layers
from backend.patcher.base import CLIP, UnetPatcher


class KModel(torch.nn.Module):
    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.storage_dtype = torch.float32


def _tree(state_dict, prefix):
    """An nn.Module tree with a layer per weight: 2-D Linear, 4-D Conv2d, 1-D LayerNorm (Forge's classes)."""
    root = torch.nn.Module()
    for key in sorted(k for k in state_dict if k.startswith(prefix) and k.endswith(".weight")):
        name = key[len(prefix) : -len(".weight")]
        w = state_dict[key]
        b = state_dict.get(prefix + name + ".bias")
        if w.dim() == 2:
            layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        elif w.dim() == 4:
            layer = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], padding=w.shape[2] // 2, bias=b is not None)
        else:
            layer = torch.nn.LayerNorm(w.shape[0])
        *path, leaf = name.split(".")
        parent = root
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, layer)
    return forge_layers(root)


def forge_loader(state_dict):
    unet_tree, clip_tree = _tree(state_dict, "diffusion_model."), _tree(state_dict, "clip_l.")
    unet, text = KModel(unet_tree).float(), torch.nn.ModuleDict({"clip_l": clip_tree}).half()
    with torch.no_grad():
        for key, value in state_dict.items():
            root, name = (unet, key) if key.startswith("diffusion_model.") else (text, key)
            param = dict(root.named_parameters())[name]
            param.copy_(value)
    unet.requires_grad_(False)
    text.requires_grad_(False)
    engine = StableDiffusion3 if any(k.startswith("diffusion_model.sd3.") for k in state_dict) else StableDiffusion
    return engine(ForgeObjects(UnetPatcher(unet), CLIP(text)))
