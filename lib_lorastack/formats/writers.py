"""Writing LoRA keys in the formats people ship: kohya (SD1/SD2 with diffusers names, SDXL with LDM/sgm names,
Flux with BFL names: ``lora_unet_double_blocks_N_img_attn_qkv``, ``lora_te1_`` CLIP-L, ``lora_te3_`` T5-XXL),
and diffusers/PEFT. Used for the built-in examples, the benchmarks and baking.

kohya stores a Flux fused weight (``img_attn.qkv``, ``linear1``) as one ``lora_down``/``lora_up`` pair; changes of
its row slices (diffusers' separate q/k/v/mlp) are written into that pair with a block-diagonal ``lora_up``
(``fuse_row_factors``): exact, and what diffusers' kohya Flux converter splits back by rows."""

from __future__ import annotations

import torch

from .model_tables import load_table
from .names import webui_to_diffusers
from .targets import CLIP_L_ROOT, FLUX_PREFIX, T5XXL_ROOT, UNET_PREFIX, Family, Target

_CLIP_L_HF = CLIP_L_ROOT + "transformer."  # + HF CLIPTextModel names
_T5XXL_HF = T5XXL_ROOT + "transformer."  # + HF T5EncoderModel names


def targetable(family: Family | str, *, norms: bool = False) -> list[Target]:
    """Every target a LoRA can change in the WebUI model of ``family``: Linear, Conv2d, OpenCLIP q/k/v/out."""
    family = Family(family)
    if family is Family.FLUX:
        return _flux_targetable()
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


def _flux_targetable() -> list[Target]:
    """Every Flux Linear (transformer, CLIP-L, T5-XXL), whole (a fused weight is one target, as kohya trains it)."""
    return [
        Target(name)
        for name, info in load_table(Family.FLUX).modules.items()
        if info.type == "Linear" and "weight" in info.params and name.startswith((FLUX_PREFIX, _CLIP_L_HF, _T5XXL_HF))
    ]


def flux_kohya_key(module: str) -> str:
    """kohya's (sd-scripts ``lora_flux.py``) prefix of a Flux module: ``lora_unet_`` + the BFL name,
    ``lora_te1_`` + the HF CLIP name, ``lora_te3_`` + the HF T5 name; dots as ``_``. Row slices share their
    weight's key."""
    if module.startswith(FLUX_PREFIX):
        return "lora_unet_" + module[len(FLUX_PREFIX) :].replace(".", "_")
    if module.startswith(_CLIP_L_HF):
        return "lora_te1_" + module[len(_CLIP_L_HF) :].replace(".", "_")
    if module.startswith(_T5XXL_HF):
        return "lora_te3_" + module[len(_T5XXL_HF) :].replace(".", "_")
    raise ValueError(f"{module} is not a Flux transformer, CLIP-L or T5-XXL module")


def fuse_row_factors(
    rows_total: int, parts: list[tuple[tuple[int, int] | None, torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(up [rows_total, Σr], down [Σr, in])`` with ``up @ down`` = each part's ``up_i @ down_i`` in its rows
    (``None``: all rows) and zeros elsewhere: the parts' ups block-diagonally, the downs stacked."""
    total = sum(int(up.shape[1]) for _, up, _ in parts)
    first = parts[0][1]
    fused_up = torch.zeros(rows_total, total, dtype=first.dtype, device=first.device)
    col = 0
    for rows, up, _ in parts:
        start, stop = rows if rows is not None else (0, rows_total)
        fused_up[start:stop, col : col + up.shape[1]] = up
        col += int(up.shape[1])
    return fused_up, torch.cat([down for _, _, down in parts], 0)


def kohya_key(target: Target, family: Family | str, *, ldm_unet: bool | None = None) -> str:
    """kohya's module prefix for a target. SDXL UNet keys use LDM names (as kohya writes them) unless told."""
    family = Family(family)
    if family is Family.FLUX:
        return flux_kohya_key(target.module)
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
    if Family(family) is Family.FLUX:
        from .flux_names import flux_forge_to_diffusers

        name = flux_forge_to_diffusers(target)
        if name is None:
            raise ValueError(f"{target} has no diffusers name")
        return name
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
    """A random kohya-format LoRA on ``targets`` (state dict ready for ``safetensors.torch.save_file``). Flux row
    slices of one fused weight are written into that weight's one pair (``fuse_row_factors``, rank Σ per slice)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    if Family(family) is Family.FLUX:
        fused: dict[str, list] = {}
        for t in targets:
            up, down = random_lora_factors(target_shape(t, family), rank, g, std)
            fused.setdefault(flux_kohya_key(t.module), [t.module, []])[1].append((t.rows, up, down))
        for key, (module, parts) in fused.items():
            up, down = fuse_row_factors(target_shape(Target(module), family)[0], parts)
            sd[f"{key}.lora_up.weight"] = up.to(dtype)
            sd[f"{key}.lora_down.weight"] = down.to(dtype)
            if alpha is not None:
                sd[f"{key}.alpha"] = torch.tensor(float(alpha) * len(parts))
        return sd
    for t in targets:
        up, down = random_lora_factors(target_shape(t, family), rank, g, std)
        key = kohya_key(t, family, ldm_unet=ldm_unet)
        sd[f"{key}.lora_up.weight"] = up.to(dtype)
        sd[f"{key}.lora_down.weight"] = down.to(dtype)
        if alpha is not None:
            sd[f"{key}.alpha"] = torch.tensor(float(alpha))
    return sd
