"""Flux fixtures: a reduced diffusers ``FluxTransformer2DModel`` (2 double + 2 single blocks), tiny CLIP-L / T5
encoders, Forge-named (BFL) module maps with the same widths, and the row provenance of diffusers' own
single-file converter (which rows of which BFL weight each diffusers weight is made of)."""

from __future__ import annotations

import re

import torch
from diffusers import FluxTransformer2DModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from lib_lorastack.formats.flux_names import FluxDims
from lib_lorastack.formats.model_tables import load_table
from lib_lorastack.formats.targets import Family, Target
from tests.helpers.tiny_models import randomize_

TINY_FLUX = dict(
    patch_size=1, in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=24, pooled_projection_dim=12, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
)  # fmt: skip
TINY_DIMS = FluxDims(hidden=32, mlp=128)
REAL_FLUX = dict(TINY_FLUX, in_channels=64, attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                 pooled_projection_dim=768, axes_dims_rope=(16, 56, 56))  # fmt: skip  # FLUX.1-dev, 2 + 2 blocks

# The real widths in flux1.json → the tiny model's (hidden 3072, MLP 12288, heads of 128, T5 4096, CLIP pooled 768, 64 in)
_REAL_TO_TINY = {3072: 32, 12288: 128, 9216: 96, 18432: 192, 21504: 224, 15360: 160, 6144: 64, 128: 16, 4096: 24,
                 768: 12, 64: 8, 256: 256}  # fmt: skip


def tiny_flux_transformer(seed: int = 0, config: dict | None = None) -> FluxTransformer2DModel:
    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**(config or TINY_FLUX)).eval()
    randomize_(model, seed)
    return model


def tiny_flux_clip(seed: int = 0) -> CLIPTextModel:
    cfg = CLIPTextConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, vocab_size=1000,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = CLIPTextModel(cfg).eval()
    randomize_(model, seed + 1)
    return model


def tiny_flux_t5(seed: int = 0) -> T5EncoderModel:
    cfg = T5Config(vocab_size=100, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, feed_forward_proj="gated-gelu",
                   is_encoder_decoder=False, use_cache=False)  # fmt: skip
    torch.manual_seed(seed)
    model = T5EncoderModel(cfg).eval()
    randomize_(model, seed + 2)
    return model


def te_forge_modules(clip: nn.Module | None, t5: nn.Module | None) -> dict[str, nn.Module]:
    """Forge name (``clip_l.transformer.text_model.…``, ``t5xxl.transformer.encoder.…``) → the tiny encoders' layers."""
    out: dict[str, nn.Module] = {}
    for root, model in (("clip_l.transformer.", clip), ("t5xxl.transformer.", t5)):
        if model is None:
            continue
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                hf = name
                if root.startswith("clip_l") and not name.startswith("text_model."):  # transformers 5 flattens CLIP
                    hf = "text_model." + name
                out[root + hf] = module
    return out


def tiny_forge_transformer(seed: int = 0, double: int = 2, single: int = 2) -> dict[str, nn.Module]:
    """Forge's Flux transformer layers (BFL names, ``diffusion_model.…``) with the tiny model's widths:
    every Linear of flux1.json's blocks < ``double`` / < ``single`` and the top level, as torch Linears."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, nn.Module] = {}
    for name, info in load_table(Family.FLUX).modules.items():
        m = re.match(r"diffusion_model\.(double|single)_blocks\.(\d+)\.", name)
        if not name.startswith("diffusion_model.") or (m and int(m.group(2)) >= (double if m.group(1) == "double" else single)):
            continue
        if info.type != "Linear":
            continue
        out_f, in_f = (_REAL_TO_TINY[d] for d in info.params["weight"])
        layer = nn.Linear(in_f, out_f, bias="bias" in info.params)
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        out[name] = layer.requires_grad_(False)
    return out


def shape_of_modules(modules: dict[str, nn.Module]):
    def shape_of(target: Target) -> tuple[int, ...] | None:
        module = modules.get(target.module)
        param = getattr(module, target.param, None) if module is not None else None
        if not isinstance(param, torch.Tensor):
            return None
        shape = tuple(param.shape)
        return shape if target.rows is None else (target.rows[1] - target.rows[0], *shape[1:])

    return shape_of


def converter_row_provenance(double: int = 19, single: int = 38, guidance: bool = True) -> dict[str, tuple[str, torch.Tensor]]:
    """diffusers weight name → (BFL weight name, the BFL rows it is made of, in order), read off diffusers'
    ``convert_flux_transformer_checkpoint_to_diffusers`` by feeding it row-index columns at the real (flux1.json)
    heights: the converter only chunks, splits and concatenates rows, so each output row says where it came from."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    checkpoint: dict[str, torch.Tensor] = {}
    for name, info in load_table(Family.FLUX).modules.items():
        m = re.match(r"diffusion_model\.(double|single)_blocks\.(\d+)\.", name)
        if not name.startswith("diffusion_model.") or (m and int(m.group(2)) >= (double if m.group(1) == "double" else single)):
            continue
        if not guidance and "guidance_in" in name:
            continue
        for param, shape in info.params.items():
            key = f"{name[len('diffusion_model.'):]}.{param}"
            # code = (index of the key) · 2^20 + row: exact in float64
            checkpoint[key] = (len(checkpoint) * (1 << 20) + torch.arange(shape[0], dtype=torch.float64)).view(-1, 1)
    keys = list(checkpoint)
    converted = convert_flux_transformer_checkpoint_to_diffusers(dict(checkpoint))
    out: dict[str, tuple[str, torch.Tensor]] = {}
    for dkey, t in converted.items():
        codes = t.view(-1).long()
        sources = torch.unique(codes >> 20)
        assert len(sources) == 1, f"{dkey} mixes BFL weights"
        out[dkey] = (keys[int(sources[0])], codes & ((1 << 20) - 1))
    return out
