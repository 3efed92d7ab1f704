"""What the benchmarks patch: WebUI-shaped models (ours) and diffusers UNets (the peer), same shapes, and five
kohya LoRAs of rank 32 on attention, feed-forward and projection layers."""

from __future__ import annotations

import torch

from lib_lorastack.formats.targets import Family
from lib_lorastack.formats.writers import kohya_lora, targetable

KINDS = (".to_q", ".to_k", ".to_v", ".to_out.0", ".ff.net.0.proj", ".ff.net.2", ".proj_in", ".proj_out")

DIFFUSERS_CONFIGS = {
    Family.SD1: dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8,
    ),
    Family.SDXL: dict(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048, attention_head_dim=(5, 10, 20), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    ),
}  # fmt: skip


def unet_targets(family: Family, limit: int | None = None):
    targets = [t for t in targetable(family) if t.module.startswith("model.diffusion_model.") and t.module.endswith(KINDS)]
    return targets[:limit]


def make_loras(
    family: Family, count: int = 5, rank: int = 32, dtype=torch.float16, limit: int | None = None
) -> list[dict[str, torch.Tensor]]:
    """``count`` kohya LoRAs (SD1: diffusers-style kohya names; SDXL: kohya's LDM names), one alpha per file."""
    targets = unet_targets(family, limit)
    return [
        kohya_lora(family, targets, rank=rank, alpha=rank / 2, seed=100 + i, dtype=dtype, std=0.02) for i in range(count)
    ]


def diffusers_unet(family: Family, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**DIFFUSERS_CONFIGS[family])
    unet = unet.to_empty(device="cpu").to(dtype)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        pool = torch.randn(1 << 22, generator=g).to(dtype)
        for p in unet.parameters():
            flat = p.view(-1)
            for s in range(0, flat.numel(), pool.numel()):
                n = min(pool.numel(), flat.numel() - s)
                flat[s : s + n].copy_(pool[:n])
            flat.mul_(0.02)
    return unet.eval().requires_grad_(False)
