"""Forge's layer classes (backend/operations.py): Linear is a plain Module holding the checkpoint's tensors (not
an ``nn.Linear``); every layer casts its weight to the input's dtype in forward and adds online LoRAs there.
With packed storage (``using_forge_operations(bnb_dtype=…)``) the Linear layers are ``ForgeOperationsGGUF.Linear``
(no ``in_features``; its forward dequantises the GGUF bytes) or ``ForgeOperationsBNB4bits.Linear``."""

import torch
import torch.nn.functional as F

from backend.operations_bnb import ForgeLoader4Bit, functional_dequantize_4bit
from backend.operations_gguf import dequantize_tensor
from backend.patcher.lora import merge_lora_to_weight


def get_weight_and_bias(layer, dtype, weight_fn=None):
    patches = getattr(layer, "forge_online_loras", None) or {}
    weight = layer.weight if weight_fn is None else weight_fn(layer.weight)
    weight = weight.to(dtype)
    if "weight" in patches:
        weight = merge_lora_to_weight(patches["weight"], weight, dtype)
    bias = None if layer.bias is None else layer.bias.to(dtype)
    return weight, bias


class ForgeOperations:
    class Linear(torch.nn.Module):
        def __init__(self, in_features, out_features):
            super().__init__()
            self.in_features, self.out_features = in_features, out_features
            self.weight = None
            self.bias = None

        def forward(self, x):
            weight, bias = get_weight_and_bias(self, x.dtype)
            return F.linear(x, weight, bias)

    class Conv2d(torch.nn.Conv2d):
        def forward(self, x):
            weight, bias = get_weight_and_bias(self, x.dtype)
            return self._conv_forward(x, weight, bias)

    class LayerNorm(torch.nn.LayerNorm):
        pass

    class GroupNorm(torch.nn.GroupNorm):
        pass


class ForgeOperationsGGUF(ForgeOperations):
    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = None
            self.bias = None

        def forward(self, x):
            weight, bias = get_weight_and_bias(self, x.dtype, weight_fn=dequantize_tensor)
            return F.linear(x, weight, bias)


class ForgeOperationsBNB4bits(ForgeOperations):
    class Linear(ForgeLoader4Bit):
        def forward(self, x):
            weight, bias = get_weight_and_bias(self, x.dtype, weight_fn=functional_dequantize_4bit)
            return F.linear(x, weight, bias)


PACKED_LINEAR = {"gguf": ForgeOperationsGGUF.Linear, "nf4": ForgeOperationsBNB4bits.Linear}


def forge_layers(module: torch.nn.Module) -> torch.nn.Module:
    """The same tree with Forge's classes: each nn.Linear becomes a ForgeOperations.Linear holding its tensors."""
    for name, child in list(module.named_children()):
        if type(child) is torch.nn.Linear:
            new = ForgeOperations.Linear(child.in_features, child.out_features)
            new.weight = child.weight
            new.bias = child.bias
            setattr(module, name, new)
        elif type(child) is torch.nn.Conv2d:
            child.__class__ = ForgeOperations.Conv2d
        else:
            forge_layers(child)
    return module
