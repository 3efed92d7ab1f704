"""Flux.1 module names: Forge's (BFL) transformer, CLIP-L and T5-XXL ↔ the names LoRA trainers write.

Forge patches the BFL layout (``diffusion_model.double_blocks.N.img_attn.qkv`` with q, k, v fused in its rows,
``single_blocks.N.linear1`` with q, k, v and the MLP input fused); diffusers and PEFT name the parts
(``transformer_blocks.N.attn.to_q``, ``single_transformer_blocks.N.proj_mlp``). Parts land on row slices of the
fused weight, in the order diffusers' single-file converter splits them (q, k, v, mlp). diffusers'
``norm_out.linear`` holds (scale, shift) where BFL's ``final_layer.adaLN_modulation.1`` holds (shift, scale):
that name carries the ``SWAP_SCALE_SHIFT`` remap. Row offsets follow the model's widths (``FluxDims``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from .model_tables import load_table
from .targets import CLIP_L_ROOT, FLUX_PREFIX, T5XXL_ROOT, Family, Target

SWAP_SCALE_SHIFT = "swap-scale-shift"  # the change's two row halves trade places

CLIP_L_HF = CLIP_L_ROOT + "transformer."  # + HF CLIPTextModel names (text_model.encoder.layers.N.…)
T5XXL_HF = T5XXL_ROOT + "transformer."  # + HF T5EncoderModel names (encoder.block.N.layer.0.SelfAttention.q)


@dataclass(frozen=True)
class FluxDims:
    """The widths that place the parts of the fused weights: ``hidden`` (3072) and the MLP width (12288)."""

    hidden: int = 3072
    mlp: int = 12288


REAL_DIMS = FluxDims()  # FLUX.1 dev / schnell


@dataclass(frozen=True)
class FluxHit:
    """What one LoRA module changes: a target, and how the change's layout differs from the target's (or None)."""

    target: Target
    remap: str | None = None


def flux_dims(shape_of=None) -> FluxDims:
    """The widths of the model ``shape_of`` describes (the real table when None)."""
    shape_of = shape_of or load_table(Family.FLUX).shape_of
    proj = shape_of(Target(FLUX_PREFIX + "double_blocks.0.img_attn.proj"))
    mlp = shape_of(Target(FLUX_PREFIX + "double_blocks.0.img_mlp.0"))
    if proj is None:
        proj = shape_of(Target(FLUX_PREFIX + "single_blocks.0.linear2"))
    hidden = proj[0] if proj else FluxDims.hidden
    if mlp is None:
        linear1 = shape_of(Target(FLUX_PREFIX + "single_blocks.0.linear1"))
        mlp = (linear1[0] - 3 * hidden,) if linear1 else (4 * hidden,)
    return FluxDims(hidden, mlp[0])


_QKV = ("q", "k", "v")
# BFL double-block part → its diffusers name(s): a fused qkv gives three names with their row index
_DOUBLE = {
    "img_attn.qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "txt_attn.qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
}
_SINGLE = {
    "linear1": ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"],
    "linear2": "proj_out",
    "modulation.lin": "norm.linear",
    "norm.query_norm": "attn.norm_q",
    "norm.key_norm": "attn.norm_k",
}
_TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}


def _row_slices(names: list[str], dims: FluxDims) -> list[tuple[int, int]]:
    h = dims.hidden
    slices = [(i * h, (i + 1) * h) for i in range(3)]
    return [*slices, (3 * h, 3 * h + dims.mlp)] if len(names) == 4 else slices


def _param(info_params: dict) -> str:
    return "weight" if "weight" in info_params else next(iter(info_params))


@dataclass(frozen=True)
class FluxNames:
    """Every spelling of every Flux module, → the Forge target it means."""

    bfl: dict[str, Target]  # BFL name without "diffusion_model." (double_blocks.0.img_attn.qkv) → whole module
    diffusers: dict[str, FluxHit]  # diffusers transformer name (transformer_blocks.0.attn.to_q) → hit
    clip_l: dict[str, Target]  # HF CLIPTextModel name (text_model.encoder.layers.0.mlp.fc1) → target
    t5xxl: dict[str, Target]  # HF T5EncoderModel name (encoder.block.0.layer.1.DenseReluDense.wi_0) → target
    to_diffusers: dict[str, str]  # str(Target) → "transformer.…" / "text_encoder.…" / "text_encoder_2.…"


@cache
def flux_names(dims: FluxDims = REAL_DIMS) -> FluxNames:
    table = load_table(Family.FLUX)
    bfl: dict[str, Target] = {}
    diff: dict[str, FluxHit] = {}
    clip_l: dict[str, Target] = {}
    t5: dict[str, Target] = {}
    to_diff: dict[str, str] = {}
    for name, info in table.modules.items():
        if name.endswith(".wrapped") or "." not in name:  # the TI wrapper's inner Embedding; the encoder roots
            continue
        whole = Target(name, _param(info.params))
        if name.startswith(CLIP_L_HF):
            clip_l[name[len(CLIP_L_HF) :]] = whole
            to_diff[str(whole)] = "text_encoder." + name[len(CLIP_L_HF) :]
            continue
        if name.startswith(T5XXL_HF):
            t5[name[len(T5XXL_HF) :]] = whole
            to_diff[str(whole)] = "text_encoder_2." + name[len(T5XXL_HF) :]
            continue
        if not name.startswith(FLUX_PREFIX):
            continue
        rel = name[len(FLUX_PREFIX) :]
        bfl[rel] = whole
        m = re.fullmatch(r"(double|single)_blocks\.(\d+)\.(.+)", rel)
        if m:
            kind, n, part = m.groups()
            mapped = (_DOUBLE if kind == "double" else _SINGLE).get(part)
            block = f"transformer_blocks.{n}" if kind == "double" else f"single_transformer_blocks.{n}"
        else:
            mapped, block = _TOP.get(rel), ""
        if mapped is None:
            continue
        if isinstance(mapped, list):
            for part_name, rows in zip(mapped, _row_slices(mapped, dims)):
                target = Target(name, whole.param, rows)
                diff[f"{block}.{part_name}"] = FluxHit(target)
                to_diff[str(target)] = f"transformer.{block}.{part_name}"
            continue
        dname = f"{block}.{mapped}" if block else mapped
        diff[dname] = FluxHit(whole, SWAP_SCALE_SHIFT if dname == "norm_out.linear" else None)
        to_diff[str(whole)] = "transformer." + dname
    return FluxNames(bfl, diff, clip_l, t5, to_diff)


def flux_diffusers_to_forge(name: str, dims: FluxDims = REAL_DIMS) -> FluxHit | None:
    """``transformer.transformer_blocks.0.attn.to_q`` / ``text_encoder.text_model.…`` / ``text_encoder_2.encoder.…``
    → the Forge target (with its remap)."""
    names = flux_names(dims)
    component, _, rest = name.partition(".")
    if component == "transformer":
        return names.diffusers.get(rest)
    if component == "text_encoder":
        t = names.clip_l.get(rest) or names.clip_l.get("text_model." + rest)
        return FluxHit(t) if t else None
    if component == "text_encoder_2":
        t = names.t5xxl.get(rest)
        return FluxHit(t) if t else None
    return None


def flux_forge_to_diffusers(target: Target | str, dims: FluxDims = REAL_DIMS) -> str | None:
    """The inverse: a Forge target (a row slice for a q/k/v/mlp part) → its diffusers / HF name."""
    return flux_names(dims).to_diffusers.get(str(target))
