"""What the benchmarks patch: WebUI-shaped models (ours) and diffusers UNets (the peer), same shapes, and five
kohya LoRAs of rank 32 on attention, feed-forward and projection layers."""

from __future__ import annotations

import torch

from lib_lorastack.formats.targets import Family
from lib_lorastack.formats.writers import kohya_key, kohya_lora, random_lora_factors, target_shape, targetable

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


def diffusers_unet(family: Family, dtype: torch.dtype, device: str = "cpu"):
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
    return unet.eval().requires_grad_(False).to(device)


def diffusers_step_inputs(family: Family, dtype: torch.dtype, device: str, batch: int = 2) -> dict:
    """One UNet step at the family's native size (SD1.5 512², SDXL 1024²), batch 2 (cond + uncond)."""
    g = torch.Generator().manual_seed(1)
    size = 128 if family is Family.SDXL else 64
    width = DIFFUSERS_CONFIGS[family]["cross_attention_dim"]
    kwargs = {
        "sample": torch.randn(batch, 4, size, size, generator=g).to(device, dtype),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": torch.randn(batch, 77, width, generator=g).to(device, dtype),
    }
    if family is Family.SDXL:
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, 1280, generator=g).to(device, dtype),
            "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * batch).to(device, dtype),
        }
    return kwargs


def diffusers_modules(unet, family: Family, targets) -> dict[str, torch.nn.Module]:
    """Our engine attached to a diffusers UNet: WebUI module names → the diffusers modules (the name map)."""
    from lib_lorastack.formats.names import webui_to_diffusers

    out = {}
    for t in targets:
        name = webui_to_diffusers(t, family)
        if name and name.startswith("unet."):
            out[t.module] = unet.get_submodule(name.removeprefix("unet."))
    return out


def realistic_loras(family: Family, dtype=torch.float16) -> dict[str, dict[str, torch.Tensor]]:
    """A stack as people use it: an attention-only LoRA (rank 16), a LoCon (attention, feed-forward, projections
    and the 3×3 convs, rank 8/4), a LoHa (attention of the middle and output blocks, rank 4) and a DoRA (attention,
    rank 8)."""
    unet = [t for t in targetable(family) if t.module.startswith("model.diffusion_model.")]
    attention = [t for t in unet if ".attn1." in t.module or ".attn2." in t.module]
    g = torch.Generator().manual_seed(7)
    out: dict[str, dict[str, torch.Tensor]] = {}
    out["attention_r16"] = kohya_lora(family, attention, rank=16, alpha=8, seed=201, dtype=dtype, std=0.02)
    locon_targets = [t for t in unet if t.module.endswith(KINDS) or (len(target_shape(t, family)) == 4 and target_shape(t, family)[2] == 3)]
    locon: dict[str, torch.Tensor] = {}
    for t in locon_targets:
        shape = target_shape(t, family)
        rank = 4 if len(shape) == 4 and shape[2] > 1 else 8
        up, down = random_lora_factors(shape, rank, g, std=0.02)
        key = kohya_key(t, family)
        locon.update({f"{key}.lora_up.weight": up.to(dtype), f"{key}.lora_down.weight": down.to(dtype), f"{key}.alpha": torch.tensor(float(rank))})
    out["locon"] = locon
    loha: dict[str, torch.Tensor] = {}
    for t in attention:
        if ".middle_block." not in t.module and ".output_blocks." not in t.module:
            continue
        o, i = target_shape(t, family)[:2]
        key = kohya_key(t, family)
        for n in (1, 2):
            loha[f"{key}.hada_w{n}_a"] = (torch.randn(o, 4, generator=g) * 0.05).to(dtype)
            loha[f"{key}.hada_w{n}_b"] = (torch.randn(4, i, generator=g) * 0.05).to(dtype)
        loha[f"{key}.alpha"] = torch.tensor(2.0)
    out["loha"] = loha
    dora = kohya_lora(family, attention, rank=8, alpha=8, seed=202, dtype=dtype, std=0.02)
    for t in attention:
        key = kohya_key(t, family)
        fan_in = target_shape(t, family)[1]
        dora[f"{key}.dora_scale"] = (0.5 + torch.rand(1, fan_in, generator=g)).to(dtype)  # column magnitudes
    out["dora"] = dora
    return out


def lycoris_file(family: Family, algo: str, *, rank: int = 16, factor: int = 8, seed: int = 11) -> dict[str, torch.Tensor]:
    """A LyCORIS file as lycoris-lora writes it (its own ``LoConModule`` / ``LokrModule`` / ``LohaModule`` state
    dicts under kohya names, fp32), on every Linear and Conv2d weight of the family's UNet, with every factor filled
    with noise (lycoris zero-initialises one of them)."""
    from lycoris.modules.locon import LoConModule
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule

    module_class = {"locon": LoConModule, "lokr": LokrModule, "loha": LohaModule}[algo]
    extra = {"factor": factor} if algo == "lokr" else {}
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for t in targetable(family):
        if not t.module.startswith("model.diffusion_model."):
            continue
        shape = target_shape(t, family)
        with torch.device("meta"):
            if len(shape) == 2:
                layer: torch.nn.Module = torch.nn.Linear(shape[1], shape[0])
            else:
                layer = torch.nn.Conv2d(shape[1], shape[0], tuple(shape[2:]), padding=shape[2] // 2)
        lyco = module_class("lora", layer, 1.0, lora_dim=rank, alpha=rank / 2, **extra)
        key = kohya_key(t, family)
        for name, tensor in lyco.state_dict().items():
            if name == "alpha":
                out[f"{key}.alpha"] = tensor.detach().clone()
            elif tensor.is_floating_point():
                out[f"{key}.{name}"] = torch.randn(tensor.shape, generator=g) * (0.02 if algo == "locon" else 0.1)
    return out
