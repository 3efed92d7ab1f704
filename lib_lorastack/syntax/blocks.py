"""Block IDs as lora-block-weight (LBW) and supermerger define them, and which block each WebUI module is in.

LBW works in a 26-slot space (BASE, IN00–IN11, M00, OUT00–OUT11) for SD1/SD2 and SDXL alike; shorter
vectors (17, 12, 20) name a subset of those slots. A module's slot is found the way LBW finds it: by
substrings of the WebUI's layer name (``diffusion_model_input_blocks_4_…``); text encoders are BASE. Modules in
no block (``time_embed``, ``out``, ``label_emb``, the text encoders' embeddings) have no ID and keep weight 1.
"""

from __future__ import annotations

from functools import cache

from ..formats.targets import UNET_PREFIX, Family

BLOCK_IDS_26 = ("BASE", *(f"IN{i:02d}" for i in range(12)), "M00", *(f"OUT{i:02d}" for i in range(12)))
BLOCK_IDS_17 = ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", *(f"OUT{i:02d}" for i in range(3, 12)))
BLOCK_IDS_12 = ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", *(f"OUT{i:02d}" for i in range(6)))
BLOCK_IDS_20 = ("BASE", *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9)))
BLOCK_IDS_FLUX = ("CLIP", "T5", "IN", *(f"D{i:02d}" for i in range(19)), *(f"S{i:02d}" for i in range(38)), "OUT")

LAYOUTS: dict[int, tuple[str, ...]] = {12: BLOCK_IDS_12, 17: BLOCK_IDS_17, 20: BLOCK_IDS_20, 26: BLOCK_IDS_26}
VECTOR_LENGTHS = (12, 17, 20, 26, 61)  # what LBW accepts (61: Flux, comes with Forge support)

FULL_LAYOUT = {Family.SD1: BLOCK_IDS_26, Family.SD2: BLOCK_IDS_26, Family.SDXL: BLOCK_IDS_20}
SHORT_LAYOUT = {Family.SD1: BLOCK_IDS_17, Family.SD2: BLOCK_IDS_17, Family.SDXL: BLOCK_IDS_12}

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


def block_id(module: str, family: Family | str | None = None) -> str | None:
    """``model.diffusion_model.input_blocks.4.1.…`` → ``"IN04"``; text encoders → ``"BASE"``; None outside blocks."""
    slot = slot_of(module)
    return None if slot is None else BLOCK_IDS_26[slot]


def is_unet(module: str) -> bool:
    return module.startswith(UNET_PREFIX)
