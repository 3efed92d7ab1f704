"""Writing LoRA keys in the formats people ship: kohya (SD1/SD2 with diffusers names, SDXL with LDM/sgm names),
and diffusers/PEFT. Used for the built-in examples, the benchmarks and baking."""

from __future__ import annotations

import torch

from .model_tables import load_table
from .names import webui_to_diffusers
from .targets import UNET_PREFIX, Family, Target


def targetable(family: Family | str, *, norms: bool = False) -> list[Target]:
    """Every target a LoRA can change in the WebUI model of ``family``: Linear, Conv2d, OpenCLIP q/k/v/out."""
    family = Family(family)
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


def kohya_key(target: Target, family: Family | str, *, ldm_unet: bool | None = None) -> str:
    """kohya's module prefix for a target. SDXL UNet keys use LDM names (as kohya writes them) unless told."""
    family = Family(family)
    if ldm_unet is None:
        ldm_unet = family is Family.SDXL
    if target.module.startswith(UNET_PREFIX):
        if ldm_unet:
            return "lora_unet_" + target.module[len(UNET_PREFIX) :].replace(".", "_")
        diff = webui_to_diffusers(target, family)
        if diff is None:
            raise ValueError(f"{target} has no diffusers name")
        return "lora_unet_" + diff[len("unet.") :].replace(".", "_")
    diff = webui_to_diffusers(target, family)
    if diff is None:
        raise ValueError(f"{target} has no Hugging Face name")
    component, _, hf = diff.partition(".")
    if component == "text_encoder_2":
        root = "lora_te2_"
    else:
        root = "lora_te1_" if family is Family.SDXL else "lora_te_"
    return root + hf.replace(".", "_")


def peft_key(target: Target, family: Family | str) -> str:
    diff = webui_to_diffusers(target, Family(family))
    if diff is None:
        raise ValueError(f"{target} has no diffusers name")
    return diff


def target_shape(target: Target, family: Family | str) -> tuple[int, ...]:
    shape = load_table(Family(family)).shape_of(target)
    if shape is None:
        raise ValueError(f"the {Family(family).value} model has no {target}")
    return shape


def random_lora_factors(
    shape: tuple[int, ...], rank: int, g: torch.Generator, std: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(up, down)`` for a layer of ``shape``: convs get a k×k down and a 1×1 up, as kohya's LoCon."""
    out, fan_in = shape[0], shape[1]
    if len(shape) == 4:
        return torch.randn(out, rank, 1, 1, generator=g) * std, torch.randn(rank, fan_in, *shape[2:], generator=g) * std
    return torch.randn(out, rank, generator=g) * std, torch.randn(rank, fan_in, generator=g) * std


def kohya_lora(
    family: Family | str,
    targets: list[Target],
    *,
    rank: int = 4,
    alpha: float | None = 2.0,
    seed: int = 0,
    ldm_unet: bool | None = None,
    dtype: torch.dtype = torch.float32,
    std: float = 0.1,
) -> dict[str, torch.Tensor]:
    """A random kohya-format LoRA on ``targets`` (state dict ready for ``safetensors.torch.save_file``)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for t in targets:
        up, down = random_lora_factors(target_shape(t, family), rank, g, std)
        key = kohya_key(t, family, ldm_unet=ldm_unet)
        sd[f"{key}.lora_up.weight"] = up.to(dtype)
        sd[f"{key}.lora_down.weight"] = down.to(dtype)
        if alpha is not None:
            sd[f"{key}.alpha"] = torch.tensor(float(alpha))
    return sd
