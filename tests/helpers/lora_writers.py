"""Write LoRA state dicts in the formats people ship (kohya, kohya-LDM, diffusers/PEFT) for given WebUI modules."""

from __future__ import annotations

import torch

from lib_lorastack.model_tables import load_table
from lib_lorastack.names import webui_to_diffusers
from lib_lorastack.targets import UNET_PREFIX, Family, Target

LORA_TYPES = ("Linear", "Conv2d", "MultiheadAttention")


def targetable(family: Family, *, norms: bool = False) -> list[Target]:
    """Every target a LoRA can change in the WebUI model of ``family``: Linear, Conv2d, OpenCLIP q/k/v/out."""
    out: list[Target] = []
    for name, info in load_table(family).modules.items():
        if info.base in ("Linear", "Conv2d") and "weight" in info.params:
            if name.endswith("attn.out_proj") or webui_to_diffusers(name, family) is not None:
                out.append(Target(name))
        elif info.base == "MultiheadAttention":
            width = info.params["in_proj_weight"][1]
            out += [Target(name, "in_proj_weight", (i * width, (i + 1) * width)) for i in range(3)]
        elif norms and info.base in ("GroupNorm", "LayerNorm") and webui_to_diffusers(name, family) is not None:
            out.append(Target(name))
    return out


def kohya_key(target: Target, family: Family, *, ldm_unet: bool | None = None) -> str:
    """kohya's module prefix for a target. SDXL UNet keys use LDM names (as kohya writes them) unless told."""
    family = Family(family)
    if ldm_unet is None:
        ldm_unet = family is Family.SDXL
    if target.module.startswith(UNET_PREFIX):
        if ldm_unet:
            return "lora_unet_" + target.module[len(UNET_PREFIX) :].replace(".", "_")
        diff = webui_to_diffusers(target, family)
        assert diff is not None, target
        return "lora_unet_" + diff[len("unet.") :].replace(".", "_")
    diff = webui_to_diffusers(target, family)
    assert diff is not None, target
    component, _, hf = diff.partition(".")
    root = {"text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}[component]
    if family is Family.SDXL and component == "text_encoder":
        root = "lora_te1_"
    return root + hf.replace(".", "_")


def peft_key(target: Target, family: Family) -> str:
    diff = webui_to_diffusers(target, family)
    assert diff is not None, target
    return diff


def _shape(target: Target, family: Family) -> tuple[int, ...]:
    shape = load_table(family).shape_of(target)
    assert shape is not None, target
    return shape


def lora_factors(shape: tuple[int, ...], rank: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    out, fan_in = shape[0], shape[1]
    if len(shape) == 4:
        down = torch.randn(rank, fan_in, *shape[2:], generator=g) * 0.1
        up = torch.randn(out, rank, 1, 1, generator=g) * 0.1
    else:
        down = torch.randn(rank, fan_in, generator=g) * 0.1
        up = torch.randn(out, rank, generator=g) * 0.1
    return up, down


def kohya_lora(
    family: Family, targets: list[Target], *, rank: int = 4, alpha: float | None = 2.0, seed: int = 0, ldm_unet=None
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for t in targets:
        up, down = lora_factors(_shape(t, family), rank, g)
        key = kohya_key(t, family, ldm_unet=ldm_unet)
        sd[f"{key}.lora_up.weight"] = up
        sd[f"{key}.lora_down.weight"] = down
        if alpha is not None:
            sd[f"{key}.alpha"] = torch.tensor(float(alpha))
    return sd


def peft_lora(family: Family, targets: list[Target], *, rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for t in targets:
        up, down = lora_factors(_shape(t, family), rank, g)
        key = peft_key(t, family)
        sd[f"{key}.lora_A.weight"] = down
        sd[f"{key}.lora_B.weight"] = up
    return sd
