"""Flux.1 LoRA key formats → Forge's Flux targets (flux1.json): every spelling, the fused row layout against diffusers'
single-file converter, unknown keys and wrong shapes named, family detection and ``inspect``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lib_lorastack.errors import NoUsableKeysError, TensorShapeError, UnsupportedModelError
from lib_lorastack.formats.flux_names import (
    SWAP_SCALE_SHIFT,
    flux_diffusers_to_forge,
    flux_forge_to_diffusers,
    flux_names,
)
from lib_lorastack.formats.flux_remap import SwappedHalves
from lib_lorastack.formats.loader import parse_state_dict
from lib_lorastack.formats.model_tables import load_table
from lib_lorastack.formats.targets import Component, Family, Target, component_of
from lib_lorastack.tools.inspect import format_report, inspect_file
from tests.helpers.flux_loras import lora_dict

F = Family.FLUX
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "model-tables"
TABLE = load_table(F)


def _linears(root: str) -> list[str]:
    return [n for n, i in TABLE.modules.items() if n.startswith(root) and i.type == "Linear"]


TRANSFORMER = _linears("diffusion_model.")
CLIP_L = _linears("clip_l.")
T5 = _linears("t5xxl.")


def _shape(name: str) -> tuple[int, int]:
    return tuple(TABLE.modules[name].params["weight"])  # type: ignore[return-value]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/model-tables not beside the checkout")
def test_shipped_flux_table_equals_the_reference() -> None:
    ref = json.loads((SHARED / "flux1.json").read_text())
    assert list(TABLE.modules) == [m["name"] for m in ref["modules"]]
    for m in ref["modules"]:
        info = TABLE.modules[m["name"]]
        assert (info.type, info.base) == (m["type"], m.get("base", m["type"]))
        assert info.params == {k: tuple(v) for k, v in m["params"].items()}


def test_family_and_components() -> None:
    assert F.supported and not Family.SD3.supported
    assert len(TRANSFORMER) == 314 and len(CLIP_L) == 72 and len(T5) == 168  # flux1.json's Linear counts
    assert component_of("diffusion_model.double_blocks.0.img_attn.qkv") is Component.UNET
    assert component_of("clip_l.transformer.text_model.encoder.layers.0.mlp.fc1") is Component.CLIP_L
    assert component_of("t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q") is Component.T5XXL
    assert Component.CLIP_L.is_text_encoder and Component.T5XXL.is_text_encoder and not Component.UNET.is_text_encoder


def test_fused_rows_follow_diffusers_single_file_converter() -> None:
    """Every diffusers transformer weight: the BFL weight and rows diffusers' converter makes it from are exactly the
    target (and remap) our key map gives its name — for all 19 double and 38 single blocks."""
    from tests.helpers.flux_models import converter_row_provenance

    provenance = converter_row_provenance()
    checked = 0
    for dkey, (bfl_key, rows) in provenance.items():
        name, _, param = dkey.rpartition(".")
        if param == "bias":
            continue
        hit = flux_diffusers_to_forge("transformer." + name)
        assert hit is not None, name
        module, _, bfl_param = bfl_key.rpartition(".")
        assert (hit.target.module, hit.target.param) == ("diffusion_model." + module, bfl_param), name
        full = TABLE.modules[hit.target.module].params[bfl_param][0]
        start, stop = hit.target.rows or (0, full)
        expected = torch.arange(start, stop)
        if hit.remap == SWAP_SCALE_SHIFT:
            expected = torch.cat((expected[len(expected) // 2 :], expected[: len(expected) // 2]))
        else:
            assert hit.remap is None
        assert torch.equal(rows, expected), name
        assert flux_forge_to_diffusers(hit.target) == "transformer." + name
        checked += 1
    assert checked == len(flux_names().diffusers) == 656
    assert {h.target.module for h in flux_names().diffusers.values()} >= set(TRANSFORMER)


def _bfl_modules(spell) -> list[tuple[str, tuple[int, int]]]:
    return [(spell(n[len("diffusion_model.") :]), _shape(n)) for n in TRANSFORMER]


def _te_modules(clip_spell, t5_spell) -> list[tuple[str, tuple[int, int]]]:
    clip = [(clip_spell(n[len("clip_l.transformer.") :]), _shape(n)) for n in CLIP_L]
    return clip + [(t5_spell(n[len("t5xxl.transformer.") :]), _shape(n)) for n in T5]


def _diffusers_modules(spell) -> list[tuple[str, tuple[int, int]]]:
    out = []
    for name, hit in flux_names().diffusers.items():
        shape = TABLE.shape_of(hit.target)
        if len(shape) == 2:  # the RMSNorm scales are not LoRA layers
            out.append((spell(name), shape))
    return out


def _us(name: str) -> str:
    return name.replace(".", "_")


SPELLINGS = {
    "kohya": (lambda: _bfl_modules(lambda n: "lora_unet_" + _us(n))
              + _te_modules(lambda n: "lora_te1_" + _us(n), lambda n: "lora_te2_" + _us(n)), {}),
    "kohya-te-variants": (lambda: _te_modules(lambda n: "lora_te_" + _us(n), lambda n: "lora_te3_" + _us(n)), {}),
    "diffusers-peft": (lambda: _diffusers_modules(lambda n: "transformer." + n)
                       + _te_modules(lambda n: "text_encoder." + n, lambda n: "text_encoder_2." + n), {"lora": "AB"}),
    "diffusers-peft-bare": (lambda: _diffusers_modules(lambda n: "base_model.model." + n), {"lora": "AB"}),
    "onetrainer": (lambda: _diffusers_modules(lambda n: "lora_transformer_" + _us(n)), {}),
    "lycoris": (lambda: _diffusers_modules(lambda n: "lycoris_" + _us(n)), {}),
    "bfl": (lambda: _bfl_modules(lambda n: "diffusion_model." + n)
            + _te_modules(lambda n: "clip_l.transformer." + n, lambda n: "t5xxl.transformer." + n), {"lora": "AB"}),
    "bfl-bare": (lambda: _bfl_modules(lambda n: n), {}),
    "comfyui-te": (lambda: _te_modules(lambda n: "text_encoders.clip_l.transformer." + n,
                                       lambda n: "text_encoders.t5xxl.transformer." + n), {}),
}  # fmt: skip
LABELS = {"kohya-te-variants": "kohya", "diffusers-peft-bare": "diffusers-peft", "bfl-bare": "bfl", "comfyui-te": "bfl"}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_every_layer_in_every_spelling(spelling: str) -> None:
    """Each spelling of every Linear of Forge's Flux: detected as Flux, one target each, the shape of flux1.json."""
    make, opts = SPELLINGS[spelling]
    modules = make()
    keys = ("lora_A.weight", "lora_B.weight") if opts.get("lora") == "AB" else ("lora_down.weight", "lora_up.weight")
    sd = lora_dict(modules, down_key=keys[0], up_key=keys[1], rank=1, alpha=lambda i: 0.5 + i % 3)
    parsed = parse_state_dict(sd, name=spelling)
    assert parsed.family is F
    assert not parsed.unmatched, parsed.unmatched[:5]
    assert not parsed.problems, parsed.problems[:5]
    assert len(parsed.modules) == len(modules)
    assert parsed.format == LABELS.get(spelling, spelling)
    for target, adapter in parsed.modules.items():
        shape = TABLE.shape_of(target)
        assert adapter.update(torch.empty(shape, device="meta"), device="meta").weight.shape == shape
    if spelling in ("kohya", "bfl"):  # whole layers: exactly the table's Linears
        assert {t.module for t in parsed.modules} == set(TRANSFORMER + CLIP_L + T5)
        assert all(t.rows is None for t in parsed.modules)


def test_underscore_spellings_of_bfl_and_diffusers_names_never_collide() -> None:
    names = flux_names()
    assert not {_us(n) for n in names.bfl} & {_us(n) for n in names.diffusers}


def test_diffusers_parts_land_on_row_slices_and_norm_out_is_swapped() -> None:
    h = 3072
    sd = lora_dict([
        ("transformer.transformer_blocks.3.attn.add_k_proj", (h, h)),
        ("transformer.single_transformer_blocks.5.attn.to_v", (h, h)),
        ("transformer.single_transformer_blocks.5.proj_mlp", (4 * h, h)),
        ("transformer.norm_out.linear", (2 * h, h)),
        ("lora_unet_final_layer_adaLN_modulation_1", (2 * h, h)),
    ], down_key="lora_A.weight", up_key="lora_B.weight")  # fmt: skip
    sd = {k.replace("lora_unet_final_layer_adaLN_modulation_1.lora_A", "lora_unet_final_layer_adaLN_modulation_1.lora_down")
          .replace("lora_unet_final_layer_adaLN_modulation_1.lora_B", "lora_unet_final_layer_adaLN_modulation_1.lora_up"): v
          for k, v in sd.items()}  # fmt: skip
    kohya_part = {k: v for k, v in sd.items() if k.startswith("lora_unet_")}
    diff_part = {k: v for k, v in sd.items() if not k.startswith("lora_unet_")}
    parsed = parse_state_dict(diff_part, family=F)
    assert set(parsed.modules) == {
        Target("diffusion_model.double_blocks.3.txt_attn.qkv", "weight", (h, 2 * h)),
        Target("diffusion_model.single_blocks.5.linear1", "weight", (2 * h, 3 * h)),
        Target("diffusion_model.single_blocks.5.linear1", "weight", (3 * h, 7 * h)),
        Target("diffusion_model.final_layer.adaLN_modulation.1"),
    }
    swapped = parsed.modules[Target("diffusion_model.final_layer.adaLN_modulation.1")]
    assert isinstance(swapped, SwappedHalves)
    down, up = diff_part["transformer.norm_out.linear.lora_A.weight"], diff_part["transformer.norm_out.linear.lora_B.weight"]
    delta = swapped.update(torch.zeros(2 * h, h)).weight
    assert torch.equal(delta[:h], up[h:] @ down) and torch.equal(delta[h:], up[:h] @ down)
    up_f, down_f = swapped.low_rank_factors()
    assert torch.equal(up_f @ down_f, delta)
    kohya = parse_state_dict(kohya_part, family=F)
    assert not isinstance(next(iter(kohya.modules.values())), SwappedHalves)


XLABS_CASES = [
    ("double_blocks.4.processor.qkv_lora1", (9216, 3072), Target("diffusion_model.double_blocks.4.img_attn.qkv")),
    ("double_blocks.4.processor.qkv_lora2", (9216, 3072), Target("diffusion_model.double_blocks.4.txt_attn.qkv")),
    ("double_blocks.4.processor.proj_lora1", (3072, 3072), Target("diffusion_model.double_blocks.4.img_attn.proj")),
    ("double_blocks.4.processor.proj_lora2", (3072, 3072), Target("diffusion_model.double_blocks.4.txt_attn.proj")),
    ("diffusion_model.double_blocks.18.processor.qkv_lora1", (9216, 3072), Target("diffusion_model.double_blocks.18.img_attn.qkv")),
    ("single_blocks.37.processor.qkv_lora", (9216, 3072), Target("diffusion_model.single_blocks.37.linear1", "weight", (0, 9216))),
    ("single_blocks.2.processor.proj_lora", (3072, 15360), Target("diffusion_model.single_blocks.2.linear2")),
]  # fmt: skip


def test_xlabs_keys() -> None:
    sd = lora_dict([(p, s) for p, s, _ in XLABS_CASES], down_key="down.weight", up_key="up.weight")
    parsed = parse_state_dict(sd)
    assert parsed.family is F and parsed.format == "xlabs"
    assert set(parsed.modules) == {t for _, _, t in XLABS_CASES}
    assert not parsed.unmatched and not parsed.problems


def test_unknown_keys_and_wrong_shapes_are_named_and_the_rest_applies() -> None:
    sd = lora_dict([
        ("lora_unet_double_blocks_0_img_attn_qkv", (9216, 3072)),  # fits
        ("lora_unet_double_blocks_1_img_attn_qkv", (3072, 3072)),  # rows of q only: does not fill the fused layer
        ("lora_unet_single_blocks_0_linear1", (9216, 3072)),  # q|k|v without the MLP rows
        ("lora_unet_double_blocks_0_img_attn_nonsense", (3072, 3072)),  # no such layer
    ], alpha=lambda i: 8.0)  # fmt: skip
    sd |= lora_dict([("transformer.transformer_blocks.0.attn.to_k", (9216, 3072))], down_key="lora_A.weight",
                    up_key="lora_B.weight")  # a part with the fused layer's rows
    sd["double_blocks.0.img_attn.qkv.something_else"] = torch.zeros(3)
    parsed = parse_state_dict(sd, family=F)
    assert set(parsed.modules) == {Target("diffusion_model.double_blocks.0.img_attn.qkv")}
    reasons = {u.key: u.reason for u in parsed.unmatched}
    assert "has 3072 outputs, the layer has 9216" in reasons["lora_unet_double_blocks_1_img_attn_qkv"]
    assert "has 9216 outputs, the layer has 21504" in reasons["lora_unet_single_blocks_0_linear1"]
    assert "has 9216 outputs, the layer has 3072" in reasons["transformer.transformer_blocks.0.attn.to_k"]
    assert "no layer of the flux model" in reasons["lora_unet_double_blocks_0_img_attn_nonsense"]
    assert "not a LoRA module key" in reasons["double_blocks.0.img_attn.qkv.something_else"]
    assert len(parsed.problems) == 3 and all("module skipped" in p for p in parsed.problems)
    with pytest.raises(TensorShapeError, match="lora_unet_double_blocks_1_img_attn_qkv"):
        parse_state_dict(sd, family=F, strict=True)


def test_family_detection_and_refusals() -> None:
    flux = lora_dict([("lora_unet_double_blocks_0_img_attn_qkv", (9216, 3072))])
    assert parse_state_dict(flux).family is F
    with pytest.raises(UnsupportedModelError, match="LoRA for FLUX, not for the SDXL model"):
        parse_state_dict(flux, family=Family.SDXL)
    sd1 = lora_dict([("lora_unet_down_blocks_0_attentions_0_proj_in", (320, 320))])
    sd1 = {k: (v[..., None, None] if "weight" in k else v) for k, v in sd1.items()}
    with pytest.raises(UnsupportedModelError, match="LoRA for SD1, not for the FLUX model"):
        parse_state_dict(sd1, family=F)
    clip_only = lora_dict([("lora_te1_text_model_encoder_layers_0_mlp_fc1", (3072, 768))])
    assert parse_state_dict(clip_only, metadata={"modelspec.architecture": "flux-1-dev/lora"}).family is F
    assert parse_state_dict(clip_only, family=F).modules.keys() == {
        Target("clip_l.transformer.text_model.encoder.layers.0.mlp.fc1")
    }
    tiny = lora_dict([("lora_unet_double_blocks_0_img_attn_qkv", (4, 2))])
    with pytest.raises(NoUsableKeysError, match="flux model"):
        parse_state_dict(tiny)


def test_lycoris_algorithms_on_flux_names() -> None:
    g = torch.Generator().manual_seed(0)
    sd = {
        # LoHa on a diffusers part (a row slice), as SimpleTuner's LyCORIS writes it
        "lycoris_single_transformer_blocks_1_attn_to_q.hada_w1_a": torch.randn(3072, 4, generator=g),
        "lycoris_single_transformer_blocks_1_attn_to_q.hada_w1_b": torch.randn(4, 3072, generator=g),
        "lycoris_single_transformer_blocks_1_attn_to_q.hada_w2_a": torch.randn(3072, 4, generator=g),
        "lycoris_single_transformer_blocks_1_attn_to_q.hada_w2_b": torch.randn(4, 3072, generator=g),
        "lycoris_single_transformer_blocks_1_attn_to_q.alpha": torch.tensor(2.0),
        # LoKr on the whole fused qkv (kohya names)
        "lora_unet_double_blocks_2_img_attn_qkv.lokr_w1": torch.randn(8, 8, generator=g),
        "lora_unet_double_blocks_2_img_attn_qkv.lokr_w2_a": torch.randn(1152, 4, generator=g),
        "lora_unet_double_blocks_2_img_attn_qkv.lokr_w2_b": torch.randn(4, 384, generator=g),
        "lora_unet_double_blocks_2_img_attn_qkv.alpha": torch.tensor(4.0),
        # DoRA (kohya dora_scale) on linear2
        "lora_unet_single_blocks_0_linear2.lora_down.weight": torch.randn(4, 15360, generator=g),
        "lora_unet_single_blocks_0_linear2.lora_up.weight": torch.randn(3072, 4, generator=g),
        "lora_unet_single_blocks_0_linear2.dora_scale": torch.rand(3072, 1, generator=g) + 0.5,
    }
    parsed = parse_state_dict(sd)
    assert parsed.family is F and not parsed.unmatched and not parsed.problems
    labels = {str(t): a.label for t, a in parsed.modules.items()}
    assert labels == {
        "diffusion_model.single_blocks.1.linear1[0:3072]": "loha",
        "diffusion_model.double_blocks.2.img_attn.qkv": "lokr",
        "diffusion_model.single_blocks.0.linear2": "dora(lora)",
    }


def test_inspect_shows_flux(tmp_path: Path) -> None:
    sd = lora_dict([("lora_unet_double_blocks_0_img_attn_qkv", (9216, 3072)),
                    ("lora_unet_single_blocks_3_linear1", (21504, 3072)),
                    ("lora_te1_text_model_encoder_layers_0_mlp_fc1", (3072, 768)),
                    ("lora_te2_encoder_block_0_layer_0_SelfAttention_q", (4096, 4096)),
                    ("lora_unet_single_blocks_4_linear1", (9216, 3072))], alpha=lambda i: 2.0)  # fmt: skip
    path = tmp_path / "flux.safetensors"
    save_file(sd, str(path), metadata={"modelspec.architecture": "flux-1-dev/lora"})
    report = inspect_file(path)
    assert report.ok and report.family == "flux" and report.format == "kohya"
    assert report.modules == {"unet": 2, "clip_l": 1, "t5xxl": 1}
    assert report.ldm_blocks == {"double_blocks.0": 1, "single_blocks.3": 1, "CLIP-L": 1, "T5-XXL": 1}
    assert len(report.problems) == 1 and "lora_unet_single_blocks_4_linear1" in report.problems[0]
    text = format_report(report)
    assert "family: FLUX" in text and "BFL blocks" in text
