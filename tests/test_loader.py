"""load_lora / parse_state_dict: ParsedLora fields, PEFT alpha, family choice, strict mode, reported leftovers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lib_lorastack.errors import NonFiniteError, TensorShapeError, UnsupportedModelError
from lib_lorastack.formats.keymap import DIFFUSERS_OLD, KOHYA, KOHYA_LDM
from lib_lorastack.formats.loader import load_lora, parse_state_dict
from lib_lorastack.formats.targets import Family, Target
from tests.helpers.lora_writers import kohya_key, kohya_lora, peft_lora, targetable

U = "model.diffusion_model."


def pick(family: Family, fragment: str, n: int = 2) -> list[Target]:
    found = [t for t in targetable(family) if fragment in str(t)][:n]
    assert found, fragment
    return found


def test_load_lora_fills_every_field(tmp_path: Path) -> None:
    targets = pick(Family.SD1, "input_blocks.1.1.transformer_blocks.0.attn1", 4)
    sd = kohya_lora(Family.SD1, targets, rank=4, alpha=2.0)
    sd["lora_unet_not_a_layer.lora_up.weight"] = torch.zeros(4, 4)
    sd["lora_unet_not_a_layer.lora_down.weight"] = torch.zeros(4, 4)
    sd["random_tensor"] = torch.zeros(1)
    meta = {"ss_output_name": "hero", "ss_base_model_version": "sd_v1"}
    path = tmp_path / "file_stem.safetensors"
    save_file(sd, str(path), metadata=meta)

    parsed = load_lora(path)
    st = path.stat()
    assert parsed.name == "file_stem" and parsed.alias == "hero"
    assert parsed.path == str(path) and parsed.family is Family.SD1 and parsed.format == KOHYA
    assert parsed.metadata == meta
    assert parsed.identity == (str(path.resolve()), st.st_size, st.st_mtime_ns)
    assert set(parsed.modules) == set(targets)
    assert {a.rank for a in parsed.modules.values()} == {4}
    assert {a.scale for a in parsed.modules.values()} == {0.5}
    reasons = {u.key: u.reason for u in parsed.unmatched}
    assert set(reasons) == {"lora_unet_not_a_layer", "random_tensor"}
    assert "no layer" in reasons["lora_unet_not_a_layer"] and "format" in reasons["random_tensor"]
    assert load_lora(path, name="other").name == "other"


def test_alias_defaults_to_the_stem(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file(kohya_lora(Family.SD1, pick(Family.SD1, "attn2.to_k")), str(path))
    assert load_lora(path).alias == "plain"


def test_sdxl_kohya_ldm_names() -> None:
    targets = pick(Family.SDXL, "input_blocks.4.1.transformer_blocks.0.attn2", 4)
    parsed = parse_state_dict(kohya_lora(Family.SDXL, targets))
    assert parsed.family is Family.SDXL and parsed.format == KOHYA_LDM and set(parsed.modules) == set(targets)


def test_sd2_openclip_qkv_out_land_on_slices() -> None:
    targets = pick(Family.SD2, "resblocks.3.attn", 4)  # q, k, v rows and out_proj
    parsed = parse_state_dict(kohya_lora(Family.SD2, targets), family=Family.SD2)
    assert set(parsed.modules) == set(targets)
    rows = sorted(t.rows for t in parsed.modules if t.rows)
    assert rows == [(0, 1024), (1024, 2048), (2048, 3072)]


def test_peft_alpha_from_adapter_metadata() -> None:
    targets = pick(Family.SD1, "transformer_blocks.0.attn1.to_", 3)
    sd = peft_lora(Family.SD1, targets, rank=4)  # keys "unet.<diffusers name>.lora_A.weight"
    cfg = {"r": 4, "lora_alpha": 8, "alpha_pattern": {"to_k": 2}, "rank_pattern": {}}
    parsed = parse_state_dict(sd, family=Family.SD1, metadata={"lora_adapter_metadata": json.dumps(cfg)})
    scales = {t.module.rsplit(".", 1)[-1]: a.scale for t, a in parsed.modules.items()}
    assert scales == {"to_q": 2.0, "to_k": 0.5, "to_v": 2.0}

    per_component = {"unet.r": 4, "unet.lora_alpha": 1, "text_encoder.r": 4, "text_encoder.lora_alpha": 16}
    parsed = parse_state_dict(sd, family=Family.SD1, metadata={"lora_adapter_metadata": json.dumps(per_component)})
    assert {a.scale for a in parsed.modules.values()} == {0.25}

    bare = {k[len("unet.") :]: v for k, v in sd.items()}  # a UNet-only PEFT state dict
    rs = {"r": 4, "lora_alpha": 4, "use_rslora": True}
    parsed = parse_state_dict(bare, family=Family.SD1, metadata={"lora_adapter_metadata": json.dumps(rs)})
    assert {round(a.scale, 6) for a in parsed.modules.values()} == {2.0}  # alpha / sqrt(r)


def test_peft_without_metadata_has_scale_one() -> None:
    parsed = parse_state_dict(peft_lora(Family.SD1, pick(Family.SD1, "proj_in"), rank=8), family=Family.SD1)
    assert parsed.modules and {a.scale for a in parsed.modules.values()} == {1.0}
    assert {a.alpha for a in parsed.modules.values()} == {None}


def test_peft_dora_magnitude_passes_through() -> None:
    targets = pick(Family.SD1, "attn2.to_v", 1)
    sd = peft_lora(Family.SD1, targets, rank=2)
    key = next(k for k in sd if k.endswith("lora_A.weight"))[: -len(".lora_A.weight")]
    sd[f"{key}.lora_magnitude_vector"] = torch.ones(320)
    parsed = parse_state_dict(sd, family=Family.SD1)
    (adapter,) = parsed.modules.values()
    assert adapter.algo == "dora" and "lora_magnitude_vector" in adapter.tensors


def test_old_diffusers_attention_processor_files() -> None:
    g = torch.Generator().manual_seed(0)
    base = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    sd = {}
    for proj in ("to_q", "to_k", "to_v", "to_out"):
        sd[f"{base}.processor.{proj}_lora.down.weight"] = torch.randn(4, 320, generator=g)
        sd[f"{base}.processor.{proj}_lora.up.weight"] = torch.randn(320, 4, generator=g)
    parsed = parse_state_dict(sd)
    assert parsed.family is Family.SD1 and parsed.format == DIFFUSERS_OLD
    prefix = U + "input_blocks.1.1.transformer_blocks.0.attn1."
    assert {t.module for t in parsed.modules} == {prefix + p for p in ("to_q", "to_k", "to_v", "to_out.0")}


def test_family_tie_is_broken_by_metadata() -> None:
    # A CLIP-L-only LoRA fits SD1's encoder and SDXL's first encoder alike.
    sd = kohya_lora(Family.SD1, pick(Family.SD1, "layers.0.mlp.fc1", 1))
    assert parse_state_dict(sd).family is Family.SD1
    assert parse_state_dict(sd, metadata={"ss_base_model_version": "sdxl_base_v1-0"}).family is Family.SDXL


def test_family_detected_from_shapes() -> None:
    targets = pick(Family.SD2, "input_blocks.1.1.transformer_blocks.0.attn2.to_k", 1)  # 1024-wide context
    assert parse_state_dict(kohya_lora(Family.SD2, targets)).family is Family.SD2


def test_wrong_base_model_both_ways() -> None:
    sd1 = kohya_lora(Family.SD1, pick(Family.SD1, "attn2.to_k", 6))
    with pytest.raises(UnsupportedModelError, match=r"SD1.*SDXL"):
        parse_state_dict(sd1, family=Family.SDXL)
    sdxl = kohya_lora(Family.SDXL, pick(Family.SDXL, "attn2.to_k", 6))
    with pytest.raises(UnsupportedModelError, match=r"SDXL.*SD1"):
        parse_state_dict(sdxl, family=Family.SD1)


def test_strict_raises_where_lenient_reports() -> None:
    targets = pick(Family.SD1, "attn1.to_q", 2)
    sd = kohya_lora(Family.SD1, targets)
    bad = next(k for k in sd if k.endswith("lora_up.weight"))
    sd[bad] = sd[bad].clone()
    sd[bad][0, 0] = float("inf")
    lenient = parse_state_dict(sd, family=Family.SD1)
    assert len(lenient.modules) == 1 and any("NaN or Inf" in p for p in lenient.problems)
    with pytest.raises(NonFiniteError, match="NaN or Inf"):
        parse_state_dict(sd, family=Family.SD1, strict=True)

    sd = kohya_lora(Family.SD1, targets)
    down = next(k for k in sd if k.endswith("lora_down.weight"))
    sd[down] = torch.zeros(4, 77)  # fan-in 77 fits no 320-wide layer
    lenient = parse_state_dict(sd, family=Family.SD1)
    assert len(lenient.modules) == 1 and any(down.split(".")[0] in p for p in lenient.problems)
    with pytest.raises(TensorShapeError, match=down.split(".")[0]):
        parse_state_dict(sd, family=Family.SD1, strict=True)


def test_unknown_key_sets_and_embeddings_are_reported() -> None:
    targets = pick(Family.SD1, "attn1.to_q", 2)
    sd = kohya_lora(Family.SD1, targets)
    first = kohya_key(targets[0], Family.SD1)
    sd[f"{first}.hada_w1_a"] = torch.zeros(320, 2)  # LoRA and LoHa keys mixed on one module
    sd["bundle_emb.mychar.string_to_param.*"] = torch.zeros(2, 768)
    parsed = parse_state_dict(sd, family=Family.SD1)
    reasons = {u.key: u.reason for u in parsed.unmatched}
    assert "unknown adapter key set" in reasons[first]
    assert "embedding" in reasons["bundle_emb.mychar.string_to_param.*"]
    assert set(parsed.modules) == {targets[1]}


def test_custom_shapes_for_small_models() -> None:
    target = pick(Family.SD1, "input_blocks.1.1.proj_in", 1)[0]
    sd = {
        f"{kohya_key(target, Family.SD1)}.lora_up.weight": torch.zeros(8, 2, 1, 1),
        f"{kohya_key(target, Family.SD1)}.lora_down.weight": torch.zeros(2, 8, 1, 1),
    }
    parsed = parse_state_dict(sd, family=Family.SD1, shape_of=lambda t: (8, 8, 1, 1))
    assert set(parsed.modules) == {target}


def test_fixture_writers_by_module_name() -> None:
    from tests.helpers.lora_writers import kohya_lora_for_targets, lycoris_loha_for_targets, peft_lora_for_targets

    names = [U + "input_blocks.4.0.in_layers.2", "cond_stage_model.model.transformer.resblocks.0.attn"]
    for writer, algo in ((kohya_lora_for_targets, "locon"), (peft_lora_for_targets, "locon"), (lycoris_loha_for_targets, "loha")):
        parsed = parse_state_dict(writer(Family.SD2, names, rank=2), family=Family.SD2)
        assert len(parsed.modules) == 4 and not parsed.unmatched  # conv + q, k, v rows
        assert algo in {a.label for a in parsed.modules.values()}
    with pytest.raises(ValueError, match="not a targetable module"):
        kohya_lora_for_targets(Family.SD1, ["model.diffusion_model.nope"])
