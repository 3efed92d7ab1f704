"""Every module of the three real tables gets the block ID lora-block-weight gives it."""

from __future__ import annotations

import re

import pytest

from lib_lorastack.formats.model_tables import load_table
from lib_lorastack.formats.targets import Family
from lib_lorastack.syntax.blocks import BLOCK_IDS_12, BLOCK_IDS_17, BLOCK_IDS_20, BLOCK_IDS_26, block_id, layer_name


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
