"""Block-weight resolution as lora-block-weight (LBW) does it: presets, vectors, letters, files, elements."""

from __future__ import annotations

import pytest

from lib_lorastack.formats.targets import Family
from lib_lorastack.syntax.blocks import BLOCK_IDS_26, BLOCK_IDS_FLUX
from lib_lorastack.syntax.lbw import read_elemental, read_presets, resolve_block_weights


def v26(**values: float) -> list[float]:
    """A 26-slot vector: all 0 (LBW fills unnamed slots of short vectors with 0) but the given IDs."""
    return [values.get(b, 0.0) for b in BLOCK_IDS_26]


ONES_17 = dict.fromkeys(["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", *[f"OUT{i:02d}" for i in range(3, 12)]], 1.0)

# (spec, family, x) → LBW's full 26-slot vector. Written from LBW's loradealer/to26, not from lbw.py.
TABLE = [
    ("ALL", Family.SD1, None, v26(**ONES_17)),
    ("NONE", Family.SD1, None, v26()),
    ("OUTALL", Family.SD1, None, v26(BASE=1, **{f"OUT{i:02d}": 1 for i in range(3, 12)})),
    ("INS", Family.SD2, None, v26(BASE=1, IN01=1, IN02=1, IN04=1)),
    ("MIDD", Family.SD1, None, v26(BASE=1, IN05=1, IN07=1, IN08=1, M00=1, OUT03=1, OUT04=1, OUT05=1, OUT06=1)),
    ("ALL0.5", Family.SDXL, None, v26(**{k: 0.5 for k in ONES_17})),
    (",".join(["1"] * 26), Family.SD1, None, [1.0] * 26),
    (",".join(str(i) for i in range(26)), Family.SD1, None, [float(i) for i in range(26)]),
    ("1,0,0,0,0,1,1,1,1,1,1,1", Family.SDXL, None, v26(BASE=1, M00=1, **{f"OUT{i:02d}": 1 for i in range(6)})),
    (",".join(["2"] * 20), Family.SDXL, None, v26(BASE=2, M00=2, **{f"IN{i:02d}": 2 for i in range(9)}, **{f"OUT{i:02d}": 2 for i in range(9)})),
    ("X,0,0,0,0,0,0,0,X+1,X-0.5,0,0,0,0,0,0,0", Family.SD1, 0.5, v26(BASE=0.5, OUT03=1.5, OUT04=0.0)),
    ("X,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0", Family.SD1, None, v26(BASE=1)),  # x defaults to 1
]


@pytest.mark.parametrize(("spec", "family", "x", "want"), TABLE, ids=[f"{t[0][:20]}-{t[1].value}" for t in TABLE])
def test_lbw_compatibility_table(spec, family, x, want) -> None:
    bw = resolve_block_weights(family, spec, x=x)
    assert list(bw.slots) == want
    assert list(bw.vector) == ([b for b in BLOCK_IDS_26] if family is not Family.SDXL else [*BLOCK_IDS_26[:10], "M00", *BLOCK_IDS_26[14:23]])


def test_weight_for_modules() -> None:
    bw = resolve_block_weights(Family.SD1, "OUTD")
    assert bw.weight_for("model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn1.to_q") == 1
    assert bw.weight_for("model.diffusion_model.input_blocks.4.1.proj_in") == 0
    assert bw.weight_for("model.diffusion_model.input_blocks.3.0.op") == 0  # not named by a 17-vector: 0
    assert bw.weight_for("cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1") == 1  # BASE
    assert bw.weight_for("model.diffusion_model.time_embed.0") == 1  # outside every block


def test_random_letters_are_seeded_and_in_range() -> None:
    spec = ",".join(["R", "U"] * 8 + ["R"])
    a = resolve_block_weights(Family.SD1, spec, seed=7).slots
    b = resolve_block_weights(Family.SD1, spec, seed=7).slots
    c = resolve_block_weights(Family.SD1, spec, seed=8).slots
    assert a == b and a != c
    named = [a[BLOCK_IDS_26.index(k)] for k in ONES_17]
    assert all(0 <= v < 1 for v in named[0::2]) and all(-0.5 <= v <= 1.5 for v in named[1::2])
    assert all(round(v, 3) == v for v in named)


def test_unknown_spec_means_all_ones_with_a_note() -> None:
    bw = resolve_block_weights(Family.SD1, "NOSUCH")
    assert bw.is_identity and "not recognised" in bw.notes[0]


def test_preset_file_reads_like_lbw_and_reports_dropped_lines() -> None:
    text = "\n".join([
        "MINE:1,0,1,0,1,0,1,0,1,0,1,0,1,0,1,0,1",
        "XL:1,1,1,1,1,1,0,0,0,0,0,0",
        "# a comment",
        "BAD:1,2,3",
        "NOCOLON 1,1",
        "HASH:1,1,1,1,1,1,1,1,1,1,1,1 # note",
        "WORD:1,1,1,1,1,1,1,1,1,1,1,q",
    ])
    presets, problems = read_presets(text)
    assert set(presets) == {"MINE", "XL"}
    assert [p.line for p in problems] == [4, 5, 6, 7]
    bw = resolve_block_weights(Family.SD1, "MINE", presets=presets)
    assert bw.vector["IN01"] == 0 and bw.vector["IN02"] == 1


def test_elemental_presets() -> None:
    bw = resolve_block_weights(Family.SD1, "ALL", lbwe="ATTNDEEPOFF")
    assert bw.weight_for("model.diffusion_model.input_blocks.5.1.transformer_blocks.0.attn1.to_q") == 0
    assert bw.weight_for("model.diffusion_model.input_blocks.5.1.transformer_blocks.0.ff.net.2") == 1
    assert bw.weight_for("model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q") == 1
    custom = read_elemental("MY:NOT IN05-OUT05:NOT attn:0.25\n\nOTHER:M00:proj:2")
    bw = resolve_block_weights(Family.SD1, None, lbwe="MY", elemental_presets=custom)
    assert bw.weight_for("model.diffusion_model.input_blocks.1.1.proj_in") == 0.25
    assert bw.weight_for("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k") == 1
    assert bw.weight_for("model.diffusion_model.middle_block.1.proj_in") == 1


# Flux: LBW's 61 slots in BLOCKIDFLUX order (CLIP, T5, IN, D00..D18, S00..S37, OUT), from its lora_block_weight.py.
FLUX_MODULES = {
    "clip_l.transformer.text_model.encoder.layers.11.mlp.fc2": 0,
    "t5xxl.transformer.encoder.block.23.layer.0.SelfAttention.q": 1,
    "diffusion_model.img_in": 2,
    "diffusion_model.vector_in.out_layer": 2,
    "diffusion_model.double_blocks.0.img_attn.qkv": 3,
    "diffusion_model.double_blocks.5.txt_mlp.2": 8,
    "diffusion_model.double_blocks.18.img_mod.lin": 21,
    "diffusion_model.single_blocks.0.linear1": 22,
    "diffusion_model.single_blocks.37.linear2": 59,
    "diffusion_model.final_layer.linear": 60,
}


def test_flux_vector_slots() -> None:
    spec = ",".join(str(i) for i in range(61))
    bw = resolve_block_weights(Family.FLUX, spec)
    assert not bw.notes and len(bw.slots) == 61 and list(bw.vector) == list(BLOCK_IDS_FLUX)
    for module, index in FLUX_MODULES.items():
        assert bw.weight_for(module) == index, module
    assert bw.vector["D05"] == 8 and bw.vector["S00"] == 22 and bw.vector["OUT"] == 60


def test_flux_presets_and_letters() -> None:
    assert resolve_block_weights(Family.FLUX, "FLUXALL").is_identity
    assert resolve_block_weights(Family.FLUX, None).slots == (1.0,) * 61
    mine, problems = read_presets("NOSINGLE:" + ",".join(["1"] * 22 + ["0"] * 38 + ["1"]))
    assert not problems
    bw = resolve_block_weights(Family.FLUX, "NOSINGLE", presets=mine)
    assert bw.weight_for("diffusion_model.single_blocks.9.linear1") == 0
    assert bw.weight_for("diffusion_model.double_blocks.9.img_attn.qkv") == 1
    x = resolve_block_weights(Family.FLUX, ",".join(["X"] * 3 + ["X-0.5"] * 19 + ["R"] * 38 + ["X+1"]), x=0.75, seed=3)
    assert x.vector["CLIP"] == 0.75 and x.vector["D10"] == 0.25 and x.vector["OUT"] == 1.75
    assert all(0 <= x.vector[f"S{i:02d}"] < 1 for i in range(38))


def test_sd_layouts_are_refused_on_flux_and_flux_on_sd() -> None:
    # LBW turns a 17/12/20/26-value vector into 26 values and then indexes past them for Flux blocks (it fails);
    # we refuse such a spec on a Flux LoRA with a note and keep every block at 1.
    for spec in ("ALL", "OUTD", ",".join(["0"] * 26), "1,0,0,0,0,1,1,1,1,1,1,1"):
        bw = resolve_block_weights(Family.FLUX, spec)
        assert bw.is_identity and "Flux LoRA needs 61" in bw.notes[0], spec
    assert "not recognised" in resolve_block_weights(Family.FLUX, "NOSUCH").notes[0]
    bw = resolve_block_weights(Family.SDXL, "FLUXALL")
    assert bw.is_identity and "Flux" in bw.notes[0]


def test_flux_elemental_rules() -> None:
    rules = read_elemental("NOIMGATTN:D00-D18:img_attn:0\n\nHALFMLP:NOT D00-D09:mlp linear2:0.5")
    bw = resolve_block_weights(Family.FLUX, None, lbwe="NOIMGATTN", elemental_presets=rules)
    assert bw.weight_for("diffusion_model.double_blocks.3.img_attn.qkv") == 0
    assert bw.weight_for("diffusion_model.double_blocks.3.txt_attn.qkv") == 1
    assert bw.weight_for("diffusion_model.single_blocks.3.linear1") == 1
    bw = resolve_block_weights(Family.FLUX, "FLUXALL", lbwe="HALFMLP", elemental_presets=rules)
    assert bw.weight_for("diffusion_model.double_blocks.4.img_mlp.0") == 1  # D04 is in D00-D09
    assert bw.weight_for("diffusion_model.double_blocks.14.img_mlp.0") == 0.5
    assert bw.weight_for("diffusion_model.single_blocks.2.linear2") == 0.5  # S02 is not in D00-D09
    assert bw.weight_for("diffusion_model.single_blocks.2.linear1") == 1
