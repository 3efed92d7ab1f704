"""Tiny diffusers/transformers models with the real SD block topology (no download), seeded and randomised,
and the map from WebUI target names to their modules."""

from __future__ import annotations

import contextlib

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from lib_lorastack.formats.names import name_maps, webui_to_diffusers
from lib_lorastack.formats.targets import Family, Target

SD1_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16, 16, 16),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
)  # fmt: skip


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """diffusers zero-initialises some layers; give every parameter seeded noise so every weight matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1))


def tiny_sd1_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD1_UNET).eval()
    randomize_(unet, seed)
    return unet


def tiny_clip(seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, vocab_size=1000,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )  # fmt: skip
    model = CLIPTextModel(cfg).eval()
    randomize_(model, seed + 1)
    return model


def _te_module(te: torch.nn.Module, hf_name: str) -> torch.nn.Module | None:
    for name in (hf_name, hf_name.removeprefix("text_model.")):  # transformers 5 flattens CLIPTextModel
        try:
            return te.get_submodule(name)
        except AttributeError:
            continue
    return None


def webui_modules(family: Family, unet: torch.nn.Module, te: torch.nn.Module | None = None) -> dict[str, torch.nn.Module]:
    """WebUI module name → the tiny model's module that plays its part."""
    out: dict[str, torch.nn.Module] = {}
    maps = name_maps(family)
    for diff, target in maps.unet_diffusers.items():
        with contextlib.suppress(AttributeError):
            out[target.module] = unet.get_submodule(diff)
    if te is not None:
        for hf, target in maps.te_hf.get("text_encoder", {}).items():
            if target.param == "weight":
                module = _te_module(te, hf)
                if module is not None:
                    out[target.module] = module
    return out


def shape_of_tiny(modules: dict[str, torch.nn.Module]):
    def shape_of(target: Target) -> tuple[int, ...] | None:
        module = modules.get(target.module)
        param = getattr(module, target.param, None) if module is not None else None
        return tuple(param.shape) if isinstance(param, torch.Tensor) else None

    return shape_of


def diffusers_name(target: Target, family: Family) -> str:
    name = webui_to_diffusers(target, family)
    assert name is not None
    return name
