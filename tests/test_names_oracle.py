"""Our WebUI (LDM/sgm, OpenCLIP) ↔ diffusers/HF names against diffusers' own checkpoint converters."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_open_clip_checkpoint

from lib_lorastack.formats.model_tables import load_table
from lib_lorastack.formats.names import diffusers_to_webui, unet_ldm_to_diffusers
from lib_lorastack.formats.targets import UNET_PREFIX, Family

UNET_CONFIGS = {
    Family.SD1: dict(
        layers_per_block=2, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ),
    Family.SD2: dict(
        layers_per_block=2, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ),
    Family.SDXL: dict(
        layers_per_block=2, block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    ),
}  # fmt: skip


@pytest.mark.parametrize("family", list(UNET_CONFIGS))
def test_unet_names_agree_with_diffusers_converter(family: Family) -> None:
    """Tag every LDM parameter with its module's number, convert with diffusers, read back where each one went."""
    modules = [n for n in load_table(family).modules if n.startswith(UNET_PREFIX)]
    checkpoint = {}
    for i, name in enumerate(modules):
        for param in load_table(family).modules[name].params:
            checkpoint[f"{name}.{param}"] = torch.tensor([float(i)])
    converted = convert_ldm_unet_checkpoint(checkpoint, {"in_channels": 4, "out_channels": 4, **UNET_CONFIGS[family]})
    assert len(converted) == len(checkpoint)
    for key, value in converted.items():
        module = modules[int(value.item())]
        diffusers_module = key.rsplit(".", 1)[0]
        assert unet_ldm_to_diffusers(module[len(UNET_PREFIX) :]) == diffusers_module, module
        assert diffusers_to_webui("unet." + diffusers_module, family).module == module


@pytest.mark.parametrize(("family", "root", "component"), [
    (Family.SD2, "cond_stage_model.", "text_encoder"),
    (Family.SDXL, "conditioner.embedders.1.", "text_encoder_2"),
])  # fmt: skip
def test_openclip_names_agree_with_diffusers_converter(family: Family, root: str, component: str) -> None:
    table = load_table(family)
    modules = [n for n in table.modules if n.startswith(root + "model.transformer.")]
    checkpoint = {}
    width = None
    for i, name in enumerate(modules):
        for param, shape in table.modules[name].params.items():
            if param == "in_proj_weight":
                width = shape[1]
                rows = torch.arange(shape[0], dtype=torch.float64)
                checkpoint[f"{name}.{param}"] = (i * 1e5 + rows).reshape(-1, 1)
            else:
                checkpoint[f"{name}.{param}"] = torch.tensor([i * 1e5], dtype=torch.float64)
    text_model = SimpleNamespace(config=SimpleNamespace(hidden_size=width))
    converted = convert_open_clip_checkpoint(text_model, checkpoint, prefix=root + "model.")
    checked = 0
    for key, value in converted.items():
        hf_module, param = key.rsplit(".", 1)
        if param != "weight":
            continue
        tag = float(value.reshape(-1)[0])
        module, row = modules[int(tag // 1e5)], int(tag % 1e5)
        target = diffusers_to_webui(f"{component}.{hf_module}", family)
        assert target is not None and target.module == module, key
        if target.rows is not None:
            assert target.rows == (row, row + width)
        checked += 1
    layers = len([m for m in modules if m.endswith(".attn")])
    assert checked >= 8 * (layers - 1)  # q, k, v, out, fc1, fc2, layer_norm1/2 per layer (SD2's last is ignored)
