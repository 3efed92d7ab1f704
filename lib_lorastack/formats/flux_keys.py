"""Flux LoRA module prefixes (every trainer's spelling) → the Forge targets they change, and the format they prove.

| format | module prefix | lands on |
|---|---|---|
| ``kohya`` | ``lora_unet_double_blocks_0_img_attn_qkv`` (BFL, ``_``) | the whole fused weight |
| ``kohya`` | ``lora_te1_text_model_…`` / ``lora_te_…`` (CLIP-L), ``lora_te2_encoder_block_…`` / ``lora_te3_…`` (T5) | |
| ``diffusers-peft`` | ``transformer.transformer_blocks.0.attn.to_q`` (also bare, or ``base_model.model.``), ``text_encoder(_2).…`` | row slices |
| ``onetrainer`` | ``lora_transformer_transformer_blocks_0_attn_to_q`` (diffusers, ``_``) | row slices |
| ``lycoris`` | ``lycoris_transformer_blocks_0_attn_to_q`` (SimpleTuner) | row slices |
| ``bfl`` | ``diffusion_model.double_blocks.0.img_attn.qkv``, bare ``double_blocks.0.…``, ``clip_l.transformer.…`` | |
| ``xlabs`` | ``double_blocks.0.processor.qkv_lora1`` / ``proj_lora2``, ``single_blocks.0.processor.qkv_lora`` | |

The ``_`` spellings of BFL and diffusers names never collide, so every root accepts both (Forge takes BFL
names after ``lora_unet_`` and diffusers names after ``lora_transformer_`` / ``lycoris_``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from .flux_names import REAL_DIMS, FluxDims, FluxHit, flux_names
from .targets import Target

KOHYA = "kohya"
PEFT = "diffusers-peft"
ONETRAINER = "onetrainer"
LYCORIS = "lycoris"
BFL = "bfl"
XLABS = "xlabs"

_TRANSFORMER_ROOTS = {"lora_unet_": KOHYA, "lora_transformer_": ONETRAINER, "lycoris_": LYCORIS}
_CLIP_ROOTS = ("lora_te1_", "lora_te_")
_T5_ROOTS = ("lora_te2_", "lora_te3_")
_XLABS = re.compile(r"(?:diffusion_model\.)?(double|single)_blocks\.(\d+)\.processor\.(qkv|proj)_lora(\d?)")
_XLABS_DOUBLE = {("qkv", "1"): "img_attn.qkv", ("qkv", "2"): "txt_attn.qkv", ("proj", "1"): "img_attn.proj",
                 ("proj", "2"): "txt_attn.proj"}  # fmt: skip


@dataclass(frozen=True)
class _Spellings:
    transformer: dict[str, tuple[FluxHit, ...]]  # "_" spelling (BFL or diffusers) → hits
    clip_l: dict[str, Target]
    t5xxl: dict[str, Target]


@cache
def _spellings(dims: FluxDims) -> _Spellings:
    names = flux_names(dims)
    transformer: dict[str, tuple[FluxHit, ...]] = {}
    for rel, target in names.bfl.items():
        transformer[rel.replace(".", "_")] = (FluxHit(target),)
    for diff, hit in names.diffusers.items():
        transformer[diff.replace(".", "_")] = (hit,)
    clip_l: dict[str, Target] = {}
    for hf, target in names.clip_l.items():
        clip_l[hf.replace(".", "_")] = target
        clip_l.setdefault(hf.removeprefix("text_model.").replace(".", "_"), target)  # transformers 5 spelling
    t5 = {hf.replace(".", "_"): target for hf, target in names.t5xxl.items()}
    return _Spellings(transformer, clip_l, t5)


def map_flux_prefix(prefix: str, fmt: str, dims: FluxDims = REAL_DIMS) -> tuple[list[FluxHit], str]:
    """The hits of one module prefix (``fmt``: what ``split_key`` saw), and the format it proved ("" when unmapped)."""
    spellings = _spellings(dims)
    for root, label in _TRANSFORMER_ROOTS.items():
        if prefix.startswith(root):
            hits = spellings.transformer.get(prefix[len(root) :])
            return (list(hits), label) if hits else ([], "")
    for roots, table in ((_CLIP_ROOTS, spellings.clip_l), (_T5_ROOTS, spellings.t5xxl)):
        for root in roots:
            if prefix.startswith(root):
                target = table.get(prefix[len(root) :])
                return ([FluxHit(target)], KOHYA) if target else ([], "")
    if fmt == XLABS:
        hit = _xlabs(prefix, dims)
        return ([hit], XLABS) if hit else ([], "")
    return _dotted(prefix, dims)


def _xlabs(prefix: str, dims: FluxDims) -> FluxHit | None:
    m = _XLABS.fullmatch(prefix)
    if not m:
        return None
    kind, n, part, index = m.groups()
    bfl = flux_names(dims).bfl
    if kind == "double":
        name = _XLABS_DOUBLE.get((part, index))
        target = bfl.get(f"double_blocks.{n}.{name}") if name else None
        return FluxHit(target) if target else None
    if index:
        return None
    if part == "proj":  # x-flux: proj_lora is (15360 → hidden), the whole linear2
        target = bfl.get(f"single_blocks.{n}.linear2")
        return FluxHit(target) if target else None
    linear1 = bfl.get(f"single_blocks.{n}.linear1")  # qkv_lora: hidden → 3·hidden, the q|k|v rows of linear1
    return FluxHit(Target(linear1.module, linear1.param, (0, 3 * dims.hidden))) if linear1 else None


def _dotted(prefix: str, dims: FluxDims) -> tuple[list[FluxHit], str]:
    names = flux_names(dims)
    for lead, table, label in (
        ("text_encoder.", names.clip_l, PEFT),
        ("text_encoder_2.", names.t5xxl, PEFT),
        ("text_encoders.clip_l.transformer.", names.clip_l, BFL),  # ComfyUI's full-checkpoint names
        ("text_encoders.t5xxl.transformer.", names.t5xxl, BFL),
        ("clip_l.transformer.", names.clip_l, BFL),  # Forge's own patch names
        ("t5xxl.transformer.", names.t5xxl, BFL),
    ):
        if prefix.startswith(lead):
            rest = prefix[len(lead) :]
            target = table.get(rest) or (table.get("text_model." + rest) if table is names.clip_l else None)
            return ([FluxHit(target)], label) if target else ([], "")
    if prefix.startswith("diffusion_model."):
        target = names.bfl.get(prefix[len("diffusion_model.") :])
        return ([FluxHit(target)], BFL) if target else ([], "")
    rest = prefix.removeprefix("transformer.")
    hit = names.diffusers.get(rest)
    if hit:
        return [hit], PEFT
    target = names.bfl.get(prefix)  # bare BFL names (no prefix)
    return ([FluxHit(target)], BFL) if target else ([], "")
