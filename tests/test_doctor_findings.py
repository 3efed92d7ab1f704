"""Findings and suggestions: correlated, opposed and overlapping LoRAs are found where they are; suggested weights
and lbw= vectors are valid tags that keep every block under its budget."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lib_lorastack.doctor.findings import COSINE_CONFLICT, block_runs
from lib_lorastack.doctor.metrics import measure
from lib_lorastack.doctor.report import diagnose
from lib_lorastack.doctor.stack import stack_item, with_entry
from lib_lorastack.doctor.suggestions import block_budget, block_multipliers
from lib_lorastack.syntax import format_entry, parse_prompt
from lib_lorastack.syntax.lbw import LAYOUTS, resolve_block_weights
from tests.helpers.doctor_fixtures import FAMILY, correlated, doctor_targets, factors, lora


def _tags(**counts) -> dict[str, str]:
    return {"ss_tag_frequency": json.dumps({"10_train": counts})}


@pytest.fixture(scope="module")
def report():
    targets = doctor_targets()
    fa = factors(targets, rank=4, seed=1)
    a = lora("char", fa, alpha=None, metadata=_tags(lsx=30, **{"1girl": 20}))
    b = lora("style", correlated(fa, seed=2, mix=0.9), alpha=None, metadata=_tags(watercolor=9, **{"1girl": 3}))
    c = lora("anti", correlated(fa, seed=3, mix=0.9, sign=-1.0), alpha=None, metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    items = [stack_item(a, 1.0), stack_item(b, 0.9), stack_item(c, 0.4, 0.5)]
    return diagnose(items, FAMILY, dtype=torch.float64)


def _kinds(report) -> dict[str, list]:
    out: dict[str, list] = {}
    for f in report.findings:
        out.setdefault(f.kind, []).append(f)
    return out


def test_findings_name_the_loras_the_blocks_and_the_value(report) -> None:
    kinds = _kinds(report)
    reinforce = next(f for f in kinds["reinforce"] if f.loras == ("char", "style"))
    assert set(reinforce.blocks) == {"BASE", "IN01", "IN04", "OUT03"}
    assert "char and style pull the same directions in BASE-OUT03 (cosine" in reinforce.message
    cos = report.metrics.blocks["IN01"].cosine()[0, 1].item()
    assert cos >= COSINE_CONFLICT
    cancel = next(f for f in kinds["cancel"] if f.loras == ("char", "anti"))
    assert cancel.value is not None and cancel.value <= -COSINE_CONFLICT
    assert any(f.loras == ("char", "style") for f in kinds["crosstalk"])  # b's input space holds a's
    assert any(f.loras == ("char", "style") for f in kinds["collision"])
    assert "3 LoRAs change the text encoders (char, style, anti)" in kinds["te-load"][0].message
    assert "char and style share trigger words (1girl)" in kinds["shared-triggers"][0].message
    assert "anti says it was trained for SDXL (sdxl_base_v1-0); the stack is SD1" in kinds["base-mismatch"][0].message
    assert all(f.severity == "warning" for f in report.findings[: len(kinds["reinforce"])])


def test_independent_loras_give_no_pair_finding() -> None:
    targets = doctor_targets()
    items = [stack_item(lora(f"l{i}", factors(targets, rank=4, seed=10 + i)), 0.8) for i in range(3)]
    r = diagnose(items, FAMILY)
    assert not [f for f in r.findings if f.kind in ("reinforce", "cancel", "crosstalk", "collision", "excess")]
    assert all(abs((blk.excess or 1) - 1) < 0.1 for blk in r.metrics.blocks.values())


def test_block_multipliers_meet_the_budget_exactly(report) -> None:
    m = report.metrics
    trimmed = 0
    for name, blk in m.blocks.items():
        budget = block_budget(blk)
        f = torch.tensor(block_multipliers(blk, budget), dtype=torch.float64)
        combined = math.sqrt(float((f[:, None] * blk.gram * f[None, :]).sum()))
        if blk.combined > budget:
            assert combined == pytest.approx(budget, rel=1e-9), name
            trimmed += 1
        else:
            assert torch.all(f == 1)
    assert trimmed >= 3


def test_suggested_stack_is_valid_syntax_and_keeps_every_block_under_budget(report) -> None:
    items = report.items
    suggested = report.suggested_stack
    assert suggested != [it.entry for it in items]
    for entry in suggested:
        tag = format_entry(entry)
        assert parse_prompt(tag).entries == (entry,), tag
        if entry.lbw is not None:
            assert entry.lbw.count(",") + 1 in LAYOUTS
            assert not resolve_block_weights(FAMILY, entry.lbw).notes
    after = [with_entry(it, e) for it, e in zip(items, suggested)]
    m2 = measure(after, FAMILY, dtype=torch.float64)
    for name, blk in m2.blocks.items():
        assert blk.combined <= report.plan.budgets[name] * (1 + 1e-9), name
    te = next(s for s in report.suggestions if s.kind == "te")
    assert "te=0 for anti" in te.message and suggested[2].te == 0.0


def test_lbw_vector_suggestion_scales_each_block_by_its_factor() -> None:
    targets = doctor_targets()
    fa = factors(targets, rank=4, seed=1)
    strong = {t: (up * (3 if "output_blocks" in t.module else 1), d) for t, (up, d) in fa.items()}
    a = lora("a", strong, alpha=None)
    b = lora("b", correlated(fa, seed=5, mix=0.95), alpha=None)
    items = [stack_item(a, 1.0), stack_item(b, 1.0, lbw="1,1,1,1,1,1,1,1,0.5,1,1,1,1,1,1,1,1")]
    r = diagnose(items, FAMILY, dtype=torch.float64)
    factors_b = {blk: r.plan.factors[blk][1] for blk in r.plan.factors}
    assert len({round(v, 6) for v in factors_b.values()}) > 1  # per-block factors: needs a vector
    entry = r.suggested_stack[1]
    assert entry.lbw is not None and entry.lbw.count(",") + 1 == 17  # attention-only LoRA: the short SD1 layout
    new = with_entry(items[1], entry)
    for target in b.modules:
        old = items[1].strength_for(target)
        from lib_lorastack.syntax.blocks import block_id

        want = old * factors_b[block_id(target.module)]
        assert want - 0.01 - 1e-9 <= new.strength_for(target) <= want + 1e-9


def test_time_split_for_a_structure_and_a_detail_lora_that_collide() -> None:
    targets = doctor_targets()
    fine = [t for t in targets if "input_blocks" in t.module]
    deep = [t for t in targets if "output_blocks" in t.module]
    fd = factors(fine, rank=4, seed=7)
    detail = lora("detail", fd, alpha=None)
    shared = correlated({t: fd[t] for t in fine if "attn1" in t.module}, seed=8, mix=0.9)
    structure = lora("structure", {**shared, **factors(deep, rank=4, seed=9, std=0.4)}, alpha=None)
    r = diagnose([stack_item(structure, 1.0), stack_item(detail, 1.0)], FAMILY)
    split = next(s for s in r.suggestions if s.kind == "time-split")
    assert split.tags == "<lora:structure:1:stop=10> <lora:detail:1:start=10>"


def test_block_runs_group_consecutive_measured_blocks() -> None:
    present = ["BASE", "IN01", "IN02", "IN04", "OUT03", "OUT04", "OUT05"]
    assert block_runs(["OUT05", "IN01", "OUT03", "OUT04", "BASE"], present) == [["BASE", "IN01"], ["OUT03", "OUT04", "OUT05"]]


def test_a_stack_with_nothing_to_measure_still_reports() -> None:
    a = lora("a", factors(doctor_targets(), rank=4, seed=1))
    r = diagnose([stack_item(a, 0.0)], FAMILY)
    assert "Nothing to measure" in r.text() and r.to_dict()["blocks"] == {} and r.png()[:4] == b"\x89PNG"
