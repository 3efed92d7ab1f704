"""Key splitting, format and family detection, and the single mapping rules (one example each)."""

from __future__ import annotations

import pytest

from lib_lorastack.formats.keymap import (
    DIFFUSERS_OLD,
    KOHYA,
    KOHYA_LDM,
    LYCORIS,
    PEFT,
    family_hint,
    foreign_family,
    map_prefix,
    split_key,
)
from lib_lorastack.formats.names import diffusers_to_webui, webui_to_diffusers
from lib_lorastack.formats.targets import Family, Target

U = "model.diffusion_model."

# (key, expected prefix, expected suffix, expected format)
SPLITS = [
    ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", "lora_unet_down_blocks_0_attentions_0_proj_in", "lora_up.weight", KOHYA),
    ("lora_unet_x.lora_down.weight", "lora_unet_x", "lora_down.weight", KOHYA),
    ("lora_unet_x.lora_mid.weight", "lora_unet_x", "lora_mid.weight", KOHYA),
    ("lora_unet_x.alpha", "lora_unet_x", "alpha", KOHYA),
    ("lora_unet_x.scale", "lora_unet_x", "scale", KOHYA),
    ("lora_unet_x.dora_scale", "lora_unet_x", "dora_scale", KOHYA),
    ("lora_te_x.bias", "lora_te_x", "bias", KOHYA),
    ("lora_te1_x.hada_w1_a", "lora_te1_x", "hada_w1_a", KOHYA),
    ("lora_te2_x.lokr_w1", "lora_te2_x", "lokr_w1", KOHYA),
    ("lora_unet_x.diff", "lora_unet_x", "diff", KOHYA),
    ("lora_unet_x.diff_b", "lora_unet_x", "diff_b", KOHYA),
    ("lora_unet_x.w_norm", "lora_unet_x", "w_norm", KOHYA),
    ("lora_unet_x.b_norm", "lora_unet_x", "b_norm", KOHYA),
    ("lora_unet_x.weight", "lora_unet_x", "weight", KOHYA),
    ("lora_unet_x.on_input", "lora_unet_x", "on_input", KOHYA),
    ("lora_unet_x.a1.weight", "lora_unet_x", "a1.weight", KOHYA),
    ("lora_unet_x.oft_blocks", "lora_unet_x", "oft_blocks", KOHYA),
    ("lora_unet_x.oft_diag", "lora_unet_x", "oft_diag", KOHYA),
    ("lora_unet_x.rescale", "lora_unet_x", "rescale", KOHYA),
    ("lycoris_down_blocks_0_x.hada_w2_b", "lycoris_down_blocks_0_x", "hada_w2_b", LYCORIS),
    ("unet.down_blocks.0.attentions.0.proj_in.lora_A.weight", "unet.down_blocks.0.attentions.0.proj_in", "lora_down.weight", PEFT),
    ("unet.mid_block.attentions.0.proj_out.lora_B.weight", "unet.mid_block.attentions.0.proj_out", "lora_up.weight", PEFT),
    ("unet.a.b.lora_A.default.weight", "unet.a.b", "lora_down.weight", PEFT),
    ("base_model.model.down_blocks.0.resnets.0.conv1.lora_B.weight", "down_blocks.0.resnets.0.conv1", "lora_up.weight", PEFT),
    ("unet.a.b.lora_magnitude_vector", "unet.a.b", "lora_magnitude_vector", PEFT),
    ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight", "text_encoder.text_model.encoder.layers.0.self_attn.q_proj", "lora_down.weight", PEFT),
    ("text_encoder_2.text_model.encoder.layers.3.mlp.fc1.lora_B.weight", "text_encoder_2.text_model.encoder.layers.3.mlp.fc1", "lora_up.weight", PEFT),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "lora_down.weight", DIFFUSERS_OLD),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", "lora_up.weight", DIFFUSERS_OLD),
    ("text_encoder.text_model.encoder.layers.2.self_attn.k_proj.lora_linear_layer.up.weight", "text_encoder.text_model.encoder.layers.2.self_attn.k_proj", "lora_up.weight", DIFFUSERS_OLD),
]  # fmt: skip


@pytest.mark.parametrize(("key", "prefix", "suffix", "fmt"), SPLITS)
def test_split_key(key: str, prefix: str, suffix: str, fmt: str) -> None:
    s = split_key(key)
    assert s is not None
    assert (s.prefix, s.suffix, s.format) == (prefix, suffix, fmt)


@pytest.mark.parametrize("key", ["lora_unet_no_dot", "some.random.tensor", "bundle_emb.x.string_to_param.*", "__metadata__"])
def test_not_module_keys(key: str) -> None:
    assert split_key(key) is None


# (prefix, format, family, expected targets, format proved)
MAPS = [
    # kohya, diffusers names (SD1)
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", KOHYA, Family.SD1,
     [Target(U + "input_blocks.1.1.transformer_blocks.0.attn1.to_q")], KOHYA),
    ("lora_unet_up_blocks_3_attentions_2_proj_out", KOHYA, Family.SD1, [Target(U + "output_blocks.11.1.proj_out")], KOHYA),
    ("lora_unet_down_blocks_1_downsamplers_0_conv", KOHYA, Family.SD1, [Target(U + "input_blocks.6.0.op")], KOHYA),
    ("lora_unet_up_blocks_0_upsamplers_0_conv", KOHYA, Family.SD1, [Target(U + "output_blocks.2.1.conv")], KOHYA),
    ("lora_unet_down_blocks_0_resnets_0_conv1", KOHYA, Family.SD1, [Target(U + "input_blocks.1.0.in_layers.2")], KOHYA),
    ("lora_unet_down_blocks_1_resnets_0_conv_shortcut", KOHYA, Family.SD1, [Target(U + "input_blocks.4.0.skip_connection")], KOHYA),
    ("lora_unet_mid_block_resnets_1_time_emb_proj", KOHYA, Family.SD1, [Target(U + "middle_block.2.emb_layers.1")], KOHYA),
    ("lora_unet_conv_norm_out", KOHYA, Family.SD1, [Target(U + "out.0")], KOHYA),
    ("lora_unet_time_embedding_linear_2", KOHYA, Family.SD1, [Target(U + "time_embed.2")], KOHYA),
    ("lora_unet_conv_in", KOHYA, Family.SD1, [Target(U + "input_blocks.0.0")], KOHYA),
    # kohya with LDM/sgm names (kohya's SDXL files)
    ("lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k", KOHYA, Family.SDXL,
     [Target(U + "input_blocks.4.1.transformer_blocks.1.attn2.to_k")], KOHYA_LDM),
    ("lora_unet_label_emb_0_0", KOHYA, Family.SDXL, [Target(U + "label_emb.0.0")], KOHYA_LDM),
    # SDXL diffusers names: the up-sampler of up_blocks.0 sits at output_blocks.2.2 (an attention block in between)
    ("lora_unet_up_blocks_0_upsamplers_0_conv", KOHYA, Family.SDXL, [Target(U + "output_blocks.2.2.conv")], KOHYA),
    ("lora_unet_add_embedding_linear_1", KOHYA, Family.SDXL, [Target(U + "label_emb.0.0")], KOHYA),
    # text encoders
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", KOHYA, Family.SD1,
     [Target("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj")], KOHYA),
    ("lora_te_text_model_encoder_layers_0_self_attn_v_proj", KOHYA, Family.SD2,
     [Target("cond_stage_model.model.transformer.resblocks.0.attn", "in_proj_weight", (2048, 3072))], KOHYA),
    ("lora_te_text_model_encoder_layers_0_self_attn_out_proj", KOHYA, Family.SD2,
     [Target("cond_stage_model.model.transformer.resblocks.0.attn.out_proj")], KOHYA),
    ("lora_te_text_model_encoder_layers_5_mlp_fc1", KOHYA, Family.SD2, [Target("cond_stage_model.model.transformer.resblocks.5.mlp.c_fc")], KOHYA),
    ("lora_te_text_model_encoder_layers_5_mlp_fc2", KOHYA, Family.SD2, [Target("cond_stage_model.model.transformer.resblocks.5.mlp.c_proj")], KOHYA),
    ("lora_te_text_model_encoder_layers_5_layer_norm1", KOHYA, Family.SD2, [Target("cond_stage_model.model.transformer.resblocks.5.ln_1")], KOHYA),
    ("lora_te_text_model_final_layer_norm", KOHYA, Family.SD2, [Target("cond_stage_model.model.ln_final")], KOHYA),
    ("lora_te_model_transformer_resblocks_0_mlp_c_fc", KOHYA, Family.SD2, [Target("cond_stage_model.model.transformer.resblocks.0.mlp.c_fc")], KOHYA),
    ("lora_te1_text_model_encoder_layers_11_mlp_fc2", KOHYA, Family.SDXL,
     [Target("conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2")], KOHYA),
    ("lora_te2_text_model_encoder_layers_31_self_attn_k_proj", KOHYA, Family.SDXL,
     [Target("conditioner.embedders.1.model.transformer.resblocks.31.attn", "in_proj_weight", (1280, 2560))], KOHYA),
    # transformers 5 spelling (no text_model level)
    ("lora_te_encoder_layers_0_mlp_fc1", KOHYA, Family.SD1, [Target("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1")], KOHYA),
    # LyCORIS
    ("lycoris_down_blocks_0_attentions_0_proj_in", LYCORIS, Family.SD1, [Target(U + "input_blocks.1.1.proj_in")], LYCORIS),
    # dotted
    ("unet.up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj", PEFT, Family.SD1,
     [Target(U + "output_blocks.3.1.transformer_blocks.0.ff.net.0.proj")], PEFT),
    ("down_blocks.0.attentions.0.proj_in", PEFT, Family.SD1, [Target(U + "input_blocks.1.1.proj_in")], PEFT),
    ("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj", PEFT, Family.SDXL,
     [Target("conditioner.embedders.1.model.transformer.resblocks.0.attn", "in_proj_weight", (0, 1280))], PEFT),
    ("text_encoder.encoder.layers.0.self_attn.q_proj", PEFT, Family.SD1,
     [Target("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj")], PEFT),
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", DIFFUSERS_OLD, Family.SD1,
     [Target(U + "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0")], DIFFUSERS_OLD),
]  # fmt: skip


@pytest.mark.parametrize(("prefix", "fmt", "family", "targets", "proved"), MAPS)
def test_map_prefix(prefix: str, fmt: str, family: Family, targets: list[Target], proved: str) -> None:
    assert map_prefix(prefix, fmt, family) == (targets, proved)


@pytest.mark.parametrize(
    ("prefix", "fmt", "family"),
    [
        ("lora_unet_down_blocks_9_attentions_0_proj_in", KOHYA, Family.SD1),
        ("lora_te2_text_model_encoder_layers_0_mlp_fc1", KOHYA, Family.SD1),  # SD1 has one text encoder
        ("lora_unet_input_blocks_7_1_transformer_blocks_5_attn1_to_q", KOHYA, Family.SD1),  # SDXL-only depth
        ("unet.nothing.here", PEFT, Family.SDXL),
    ],
)
def test_unknown_prefixes_map_to_nothing(prefix: str, fmt: str, family: Family) -> None:
    assert map_prefix(prefix, fmt, family) == ([], "")


def test_sd1_up_sampler_differs_from_sdxl() -> None:
    """Without attention in SD1's lowest up block the sampler is output_blocks.2.1; SDXL's is .2.2."""
    assert webui_to_diffusers(U + "output_blocks.2.1.conv", Family.SD1) == "unet.up_blocks.0.upsamplers.0.conv"
    assert webui_to_diffusers(U + "output_blocks.2.2.conv", Family.SDXL) == "unet.up_blocks.0.upsamplers.0.conv"
    assert diffusers_to_webui("unet.up_blocks.0.upsamplers.0.conv", Family.SDXL) == Target(U + "output_blocks.2.2.conv")


@pytest.mark.parametrize("family", [Family.SD1, Family.SD2, Family.SDXL])
def test_name_conversion_round_trips(family: Family) -> None:
    from lib_lorastack.formats.names import name_maps

    maps = name_maps(family)
    assert len(maps.webui_to_diffusers) > 100
    for webui, diff in maps.webui_to_diffusers.items():
        target = diffusers_to_webui(diff, family)
        assert target is not None and str(target) == webui
        assert webui_to_diffusers(target, family) == diff


def test_name_conversion_of_unknown_names() -> None:
    assert diffusers_to_webui("unet.down_blocks.7.resnets.0.conv1", Family.SD1) is None
    assert diffusers_to_webui("vae.decoder.conv_in", Family.SD1) is None
    assert webui_to_diffusers("first_stage_model.decoder.conv_in", Family.SD1) is None


@pytest.mark.parametrize(
    ("metadata", "family"),
    [
        ({"ss_base_model_version": "sdxl_base_v1-0"}, Family.SDXL),
        ({"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}, Family.SDXL),
        ({"ss_base_model_version": "sd_v1"}, Family.SD1),
        ({"modelspec.architecture": "stable-diffusion-v1/lora"}, Family.SD1),
        ({"ss_base_model_version": "sd_v2"}, Family.SD2),
        ({"ss_v2": "True"}, Family.SD2),
        ({}, None),
    ],
)
def test_family_hint(metadata: dict[str, str], family: Family | None) -> None:
    assert family_hint(metadata) == family


@pytest.mark.parametrize(
    ("keys", "metadata", "family"),
    [
        (["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"], {}, Family.FLUX),
        (["transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight"], {}, Family.FLUX),
        (["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight"], {}, Family.SD3),
        (["lora_unet_x.lora_up.weight"], {"modelspec.architecture": "flux-1-dev/lora"}, Family.FLUX),
        (["lora_unet_x.lora_up.weight"], {"modelspec.architecture": "stable-diffusion-v3-medium/lora"}, Family.SD3),
        (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"], {"ss_base_model_version": "sd_v1"}, None),
    ],
)
def test_foreign_family(keys: list[str], metadata: dict[str, str], family: Family | None) -> None:
    assert foreign_family(keys, metadata) == family


def test_keymap_reexports_the_name_conversion() -> None:
    import lib_lorastack.formats.keymap as keymap

    assert keymap.diffusers_to_webui is diffusers_to_webui
    assert keymap.webui_to_diffusers is webui_to_diffusers
