"""Every module of the three real tables gets the block ID lora-block-weight gives it."""

from __future__ import annotations

import re

import pytest

from lib_lorastack.formats.model_tables import load_table
from lib_lorastack.formats.targets import Family
from lib_lorastack.syntax.blocks import (
    BLOCK_IDS_12,
    BLOCK_IDS_17,
    BLOCK_IDS_20,
    BLOCK_IDS_26,
    BLOCK_IDS_FLUX,
    block_id,
    block_ids,
    layer_name,
)


def expected_id(module: str) -> str | None:
    """Written from LBW's rules, independently of blocks.py: LDM block numbers; text-encoder layers are BASE."""
    m = re.match(r"model\.diffusion_model\.(input_blocks|output_blocks)\.(\d+)\.", module)
    if m:
        return f"{'IN' if m.group(1) == 'input_blocks' else 'OUT'}{int(m.group(2)):02d}"
    if module.startswith("model.diffusion_model.middle_block."):
        return "M00"
    if ".encoder.layers." in module or ".transformer.resblocks." in module:
        return "BASE"
    return None


@pytest.mark.parametrize("family", [Family.SD1, Family.SD2, Family.SDXL])
def test_every_module_has_its_block(family: Family) -> None:
    names = list(load_table(family).modules)
    for name in names:
        assert block_id(name, family) == expected_id(name), name
    ids = {block_id(n, family) for n in names} - {None}
    layout = BLOCK_IDS_20 if family is Family.SDXL else BLOCK_IDS_26
    assert ids == set(layout)


def test_short_layouts_are_the_attention_blocks() -> None:
    for family, short in ((Family.SD1, BLOCK_IDS_17), (Family.SDXL, BLOCK_IDS_12)):
        attn = {block_id(n) for n in load_table(family).modules if "attn" in n} - {None}
        assert attn == set(short)
    assert len(BLOCK_IDS_17) == 17 and len(BLOCK_IDS_12) == 12 and len(BLOCK_IDS_20) == 20


def test_outside_every_block() -> None:
    for name in ("model.diffusion_model.time_embed.0", "model.diffusion_model.out.2", "model.diffusion_model.label_emb.0.0",
                 "cond_stage_model.transformer.text_model.final_layer_norm", "conditioner.embedders.1.model.ln_final"):
        assert block_id(name) is None


def test_layer_names_are_the_webuis() -> None:
    assert layer_name("model.diffusion_model.input_blocks.1.1.proj_in") == "diffusion_model_input_blocks_1_1_proj_in"
    assert layer_name("conditioner.embedders.1.model.transformer.resblocks.0.attn") == "1_model_transformer_resblocks_0_attn"
    assert layer_name("cond_stage_model.transformer.text_model.embeddings.token_embedding").endswith("_wrapped")


def expected_flux_id(module: str) -> str | None:
    """LBW's ``get_flux_blocks`` rules, written independently of blocks.py, on Forge's Flux names (flux1.json)."""
    if module.startswith("t5xxl"):
        return "T5"
    if module.startswith("clip_l"):
        return "CLIP"
    m = re.match(r"diffusion_model\.(double|single)_blocks\.(\d+)\.", module)
    if m:
        return f"{'D' if m.group(1) == 'double' else 'S'}{int(m.group(2)):02d}"
    if re.match(r"diffusion_model\.(img_in|txt_in|time_in|vector_in|guidance_in)\b", module):
        return "IN"
    if module.startswith("diffusion_model.final_layer."):
        return "OUT"
    return None


def test_flux_layout_is_lbws() -> None:
    # BLOCKIDFLUX in lora_block_weight.py: ["CLIP", "T5", "IN"] + D00..D18 + S00..S37 + ["OUT"], 61 long.
    assert len(BLOCK_IDS_FLUX) == 61 and block_ids(Family.FLUX) == BLOCK_IDS_FLUX
    assert BLOCK_IDS_FLUX[:4] == ("CLIP", "T5", "IN", "D00")
    assert BLOCK_IDS_FLUX.index("D18") == 21 and BLOCK_IDS_FLUX.index("S00") == 22
    assert BLOCK_IDS_FLUX.index("S37") == 59 and BLOCK_IDS_FLUX[-1] == "OUT"
    assert block_ids(Family.SD1) == BLOCK_IDS_26 and block_ids(Family.SDXL) == BLOCK_IDS_20


def test_every_flux_module_has_lbws_block() -> None:
    names = list(load_table(Family.FLUX).modules)
    assert len(names) == 787
    for name in names:
        assert block_id(name) == expected_flux_id(name), name
        assert block_id(name, Family.FLUX) == block_id(name)
    assert {block_id(n) for n in names} - {None} == set(BLOCK_IDS_FLUX)
    assert block_id("diffusion_model.double_blocks.7.img_attn.qkv") == "D07"
    assert block_id("diffusion_model.single_blocks.12.linear1") == "S12"
    assert block_id("diffusion_model.guidance_in.in_layer") == "IN"
    assert block_id("diffusion_model.final_layer.adaLN_modulation.1") == "OUT"
    assert block_id("clip_l.transformer.text_model.encoder.layers.3.self_attn.q_proj") == "CLIP"
    assert block_id("t5xxl.transformer.encoder.block.0.layer.1.DenseReluDense.wi_0") == "T5"
