"""backend/loader.py forge_loader: the model's parts built from a checkpoint in Forge's names
(``diffusion_model.…`` → the UNet's KModel, ``clip_l.…`` → the JointTextEncoder), UNet fp32, text encoder fp16
(Forge's choices on a CPU). ``sd3.`` in the checkpoint's first key makes an SD3-like engine. A UNet weight that is a
GGUF tensor (``ParameterGGUF``) or a bnb 4-bit one (``Params4bit``) makes its layer Forge's GGUF or bnb Linear,
holding that packed tensor as it is, and the UNet's ``storage_dtype`` "gguf" / "nf4" (as Forge's loader detects)."""

import torch

from backend.diffusion_engine.base import ForgeObjects
from backend.diffusion_engine.sd15 import StableDiffusion, StableDiffusion3
from backend.operations import PACKED_LINEAR, forge_layers
from backend.patcher.base import CLIP, UnetPatcher


class KModel(torch.nn.Module):
    def __init__(self, diffusion_model, storage_dtype=torch.float32):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.storage_dtype = storage_dtype


def packed_kind(t) -> str | None:
    if getattr(t, "gguf_cls", None) is not None:
        return "gguf"
    state = getattr(t, "quant_state", None)
    return None if state is None else state.quant_type


def _tree(state_dict, prefix):
    """An nn.Module tree with a layer per weight: 2-D Linear, 4-D Conv2d, 1-D LayerNorm (Forge's classes)."""
    root = torch.nn.Module()
    for key in sorted(k for k in state_dict if k.startswith(prefix) and k.endswith(".weight")):
        name = key[len(prefix) : -len(".weight")]
        w = state_dict[key]
        b = state_dict.get(prefix + name + ".bias")
        if packed_kind(w) is not None:
            layer = PACKED_LINEAR[packed_kind(w)]()
            layer.weight = w
            layer.bias = None if b is None else torch.nn.Parameter(b.float(), requires_grad=False)
        elif w.dim() == 2:
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
    kinds = {packed_kind(v) for v in state_dict.values()} - {None}
    unet_tree, clip_tree = _tree(state_dict, "diffusion_model."), _tree(state_dict, "clip_l.")
    unet, text = KModel(unet_tree, next(iter(kinds), torch.float32)), torch.nn.ModuleDict({"clip_l": clip_tree}).half()
    for module in unet.modules():  # float casts leave the packed layers' tensors as they are (as Forge does)
        for param in list(module.parameters(recurse=False)):
            if packed_kind(param) is None and param.is_floating_point():
                param.data = param.data.float()
    packed = {f"{n}.weight" for n, m in unet.named_modules() if packed_kind(getattr(m, "weight", None)) is not None}
    packed |= {f"{n}.bias" for n in (k[: -len(".weight")] for k in packed)}
    with torch.no_grad():
        for key, value in state_dict.items():
            if key in packed:
                continue
            root, name = (unet, key) if key.startswith("diffusion_model.") else (text, key)
            param = dict(root.named_parameters())[name]
            param.copy_(value)
    unet.requires_grad_(False)
    text.requires_grad_(False)
    engine = StableDiffusion3 if any(k.startswith("diffusion_model.sd3.") for k in state_dict) else StableDiffusion
    return engine(ForgeObjects(UnetPatcher(unet), CLIP(text)))
