"""Block IDs as lora-block-weight (LBW) and supermerger define them, and which block each WebUI module is in.

LBW works in a 26-slot space (BASE, IN00–IN11, M00, OUT00–OUT11) for SD1/SD2 and SDXL alike; shorter
vectors (17, 12, 20) name a subset of those slots. A module's slot is found the way LBW finds it: by
substrings of the WebUI's layer name (``diffusion_model_input_blocks_4_…``); text encoders are BASE. Modules in
no block (``time_embed``, ``out``, ``label_emb``, the text encoders' embeddings) have no ID and keep weight 1.

Flux.1 has its own 61-slot space (LBW's ``BLOCKIDFLUX``): CLIP, T5, IN, D00–D18 (``double_blocks``), S00–S37
(``single_blocks``), OUT. LBW finds a Flux module's block from Forge's patch key (``diffusion_model.…``,
``clip_l.…``, ``t5xxl.…`` + ``.weight``, dots as ``_``), in this order: ``t5xxl`` → T5, ``clip_`` → CLIP,
``double_blocks`` → D + the first ``_N_`` number, ``single_blocks`` → S + that number, ``_in`` (img_in, txt_in,
time_in, vector_in, guidance_in) → IN, ``final_layer`` → OUT; anything else is in no block (weight 1). Flux module
names are told apart from the SD ones by their roots, so ``block_id`` needs no family.
"""

from __future__ import annotations

import re
from functools import cache

from ..formats.targets import UNET_PREFIX, Family

BLOCK_IDS_26 = ("BASE", *(f"IN{i:02d}" for i in range(12)), "M00", *(f"OUT{i:02d}" for i in range(12)))
BLOCK_IDS_17 = ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", *(f"OUT{i:02d}" for i in range(3, 12)))
BLOCK_IDS_12 = ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", *(f"OUT{i:02d}" for i in range(6)))
BLOCK_IDS_20 = ("BASE", *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9)))
BLOCK_IDS_FLUX = ("CLIP", "T5", "IN", *(f"D{i:02d}" for i in range(19)), *(f"S{i:02d}" for i in range(38)), "OUT")

LAYOUTS: dict[int, tuple[str, ...]] = {12: BLOCK_IDS_12, 17: BLOCK_IDS_17, 20: BLOCK_IDS_20, 26: BLOCK_IDS_26}
FLUX_LENGTH = len(BLOCK_IDS_FLUX)  # 61
VECTOR_LENGTHS = (12, 17, 20, 26, FLUX_LENGTH)  # what LBW accepts

FULL_LAYOUT = {Family.SD1: BLOCK_IDS_26, Family.SD2: BLOCK_IDS_26, Family.SDXL: BLOCK_IDS_20, Family.FLUX: BLOCK_IDS_FLUX}
# LBW has no short Flux layout: a Flux vector always has all 61 values.
SHORT_LAYOUT = {Family.SD1: BLOCK_IDS_17, Family.SD2: BLOCK_IDS_17, Family.SDXL: BLOCK_IDS_12}
TE_BLOCKS = frozenset({"BASE", "CLIP", "T5"})  # the blocks a LoRA's TE strength applies to

FLUX_ROOTS = ("diffusion_model.", "clip_l.", "t5xxl.")  # Forge's Flux patcher roots (../shared/model-tables/flux1.json)
_FIRST_NUMBER = re.compile(r"_(\d+)_")

# LBW's substrings, in its order; the last one found in a layer name wins. Index = slot in BLOCK_IDS_26,
# except the last two, which are text-encoder spellings of BASE.
_SUBSTRINGS = (
    "encoder",
    *(f"diffusion_model_input_blocks_{i}_" for i in range(12)),
    "diffusion_model_middle_block_",
    *(f"diffusion_model_output_blocks_{i}_" for i in range(12)),
    "embedders",
    "transformer_resblocks",
)


def layer_name(module: str) -> str:
    """The WebUI's ``network_layer_name`` of a checkpoint-style module name (what LBW matches on)."""
    if module.startswith("model."):
        name = module[len("model.") :]
    elif module.startswith("cond_stage_model."):
        name = module[len("cond_stage_model.") :]
    elif module.startswith("conditioner.embedders."):
        rest = module[len("conditioner.embedders.") :]
        index, _, tail = rest.partition(".")
        name = f"{index}.{tail}"
    else:
        name = module
    name = name.replace(".", "_")
    return name + "_wrapped" if name.endswith("token_embedding") else name


@cache
def slot_of(module: str) -> int | None:
    """The 26-space slot of a module (0 = BASE), or None when LBW would not pick it."""
    name = layer_name(module)
    slot = None
    for i, sub in enumerate(_SUBSTRINGS):
        if sub in name:
            slot = 0 if i >= 26 else i
    return slot


def is_flux_module(module: str) -> bool:
    return module.startswith(FLUX_ROOTS) or module in ("clip_l", "t5xxl")


def flux_patch_key(module: str, param: str = "weight") -> str:
    """The Forge patch key LBW matches a Flux module on: ``diffusion_model_double_blocks_0_img_attn_qkv_weight``."""
    return f"{module}.{param}".replace(".", "_")


@cache
def flux_block_id(module: str) -> str | None:
    """LBW's ``get_flux_blocks`` on a Flux module's patch key: CLIP, T5, IN, Dnn, Snn, OUT, or None (no block)."""
    key = flux_patch_key(module)
    if "vae" in key:
        return None
    if "t5xxl" in key:
        return "T5"
    if "clip_" in key:
        return "CLIP"
    number = _FIRST_NUMBER.search(key)
    if "double_blocks" in key and number:
        return f"D{int(number.group(1)):02d}"
    if "single_blocks" in key and number:
        return f"S{int(number.group(1)):02d}"
    if "_in" in key:
        return "IN"
    if "final_layer" in key:
        return "OUT"
    return None


def block_id(module: str, family: Family | str | None = None) -> str | None:
    """``model.diffusion_model.input_blocks.4.1.…`` → ``"IN04"``; text encoders → ``"BASE"`` (Flux: ``"CLIP"``,
    ``"T5"``); ``diffusion_model.double_blocks.7.…`` → ``"D07"``; None outside blocks."""
    if is_flux_module(module):
        block = flux_block_id(module)
        return block if block in BLOCK_IDS_FLUX else None
    slot = slot_of(module)
    return None if slot is None else BLOCK_IDS_26[slot]


def slot_space(family: Family | str) -> tuple[str, ...]:
    """The IDs of the slots a family's resolved block weights live in: LBW's 26 for SD1/SD2/SDXL, 61 for Flux."""
    return BLOCK_IDS_FLUX if Family(family) is Family.FLUX else BLOCK_IDS_26


def block_ids(family: Family | str) -> tuple[str, ...]:
    """The block IDs a UI shows for ``family`` (LBW's full layout): 26 (SD1/SD2), 20 (SDXL), 61 (Flux)."""
    family = Family(family)
    if family not in FULL_LAYOUT:
        raise ValueError(f"no block layout for {family.value!r} (block weights exist for sd1, sd2, sdxl, flux)")
    return FULL_LAYOUT[family]


def is_unet(module: str) -> bool:
    return module.startswith(UNET_PREFIX)
