"""Block-weight resolution as lora-block-weight (LBW) does it: presets, vectors, letters, files, elements."""

from __future__ import annotations

import pytest

from lib_lorastack.formats.targets import Family
from lib_lorastack.syntax.blocks import BLOCK_IDS_26
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
