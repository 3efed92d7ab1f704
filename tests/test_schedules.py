"""Issue 16: tags read as the WebUI and lora-block-weight read them.

* ``start=``/``stop=`` switch as lora-block-weight does in A1111: ``sampling_step > N - 2`` on the WebUI's
  ``sampling_step`` counter (the hosts pass that counter), so ``start=1`` is the plain LoRA.
* A named ``dyn=`` overrides a positional one before the value is checked.
* An infotext written when schedules counted from 0 pastes to the same steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lib_lorastack.host.infotext import (
    SCHEDULE_MARK,
    StackRecord,
    legacy_schedules,
    parse_stack_value,
    shift_schedules,
    stack_value,
)
from lib_lorastack.schedule import schedule_active, steps_text
from lib_lorastack.syntax import StackEntry, parse_prompt
from tests.helpers.engine_fixtures import same_bits, snapshot
from tests.helpers.host_fixtures import lora_folder, make_session, model_handle

E = StackEntry


def lbw_active(start: int | None, stop: int | None, sampling_step: int) -> bool:
    """lora-block-weight's own check in A1111 (scripts/lora_block_weight.py, on_cfg_denoiser), written out: the
    LoRA is on once ``sampling_step > start - 2`` and off again once ``sampling_step > stop - 2``."""
    on = start is None or sampling_step > start - 2
    off = stop is not None and sampling_step > stop - 2
    return on and not off


@pytest.mark.parametrize("start", [None, 0, 1, 2, 3, 7])
@pytest.mark.parametrize("stop", [None, 0, 1, 2, 4, 8])
def test_the_rule_is_lora_block_weights(start, stop) -> None:
    for step in range(10):
        assert schedule_active(start, stop, step) == lbw_active(start, stop, step), (start, stop, step)


def test_start_1_is_the_plain_lora_and_start_2_joins_when_the_counter_reads_1() -> None:
    assert [schedule_active(1, None, s) for s in range(4)] == [True] * 4
    assert [schedule_active(2, None, s) for s in range(4)] == [False, True, True, True]
    assert [schedule_active(None, 3, s) for s in range(4)] == [True, True, False, False]
    assert schedule_active(5, 2, None)  # outside sampling (the text encoder) everything applies
    assert steps_text(5, 20) == "steps 5-19" and steps_text(None, None) == "steps 1-end" and steps_text(3, 3) == "no step"


def test_a_never_active_schedule_is_named() -> None:
    for text in ("<lora:x:1:stop=1>", "<lora:x:1:start=4:stop=4>", "<lora:x:1:start=0:stop=1>"):
        request = parse_prompt(text)
        assert [d.kind for d in request.diagnostics] == ["bad-schedule"], text
        assert "never active" in request.diagnostics[0].message
    assert not parse_prompt("<lora:x:1:start=0:stop=2>").diagnostics


def test_the_per_step_path_runs_the_lora_at_the_steps_lbw_would(tmp_path: Path) -> None:
    """The session's per-step path (the sampler's callback), step by step: which steps see the LoRA."""
    folder = lora_folder(tmp_path)
    session, _ = make_session(folder)
    model, handle = model_handle()
    base = snapshot(model)
    session.activate(handle, [["detail", "1"]])
    plain = snapshot(model)
    session.activate(handle, [])

    session.activate(handle, [["detail", "1", "start=1"]])
    assert same_bits(snapshot(model), plain)  # start=1 is the plain LoRA from the first step on, bit for bit
    for step in range(4):
        session.set_step(handle.key, step)
        assert same_bits(snapshot(model), plain)

    def part(weights: dict, unet: bool) -> dict:
        return {k: v for k, v in weights.items() if k.startswith("model.diffusion_model.") == unet}

    assert not same_bits(part(plain, True), part(base, True)) and not same_bits(part(plain, False), part(base, False))
    seen = []
    session.activate(handle, [["detail", "1", "start=2", "stop=4"]])
    for step in range(5):
        session.set_step(handle.key, step)
        now = snapshot(model)
        assert same_bits(part(now, False), part(plain, False))  # the text encoder's part always applies
        assert same_bits(part(now, True), part(plain, True)) or same_bits(part(now, True), part(base, True))
        seen.append(same_bits(part(now, True), part(plain, True)))
    assert seen == [False, True, True, False, False]  # the UNet sees the LoRA while the counter reads 1 and 2
    session.release(handle.key)


@pytest.mark.parametrize(
    ("prompt", "entry"),
    [
        ("<lora:sf:.5:0.75:0:dyn=003>", E("sf", 0.5, 0.75, dyn=3)),
        ("<lora:x:1:1:0:dyn=8>", E("x", dyn=8)),
        ("<lora:x:1:1:lots:dyn=2>", E("x", dyn=2)),
    ],
)
def test_a_named_dyn_overrides_the_positional_one_before_it_is_checked(prompt, entry) -> None:
    request = parse_prompt(prompt)
    assert list(request.entries) == [entry] and not request.errors


def test_extra_positional_values_after_dyn_are_a_warning_not_a_loss() -> None:
    request = parse_prompt("<lora:x:-2.5:0.75:0:00.50:dyn=+2>")
    assert list(request.entries) == [E("x", -2.5, 0.75, dyn=2)]
    assert [d.severity for d in request.diagnostics] == ["warning"]
    assert "after dyn" in request.diagnostics[0].message


def test_the_final_dyn_is_still_checked() -> None:
    for text, fault in (("<lora:x:1:1:0>", "below 1"), ("<lora:x:1:1:4:dyn=0>", "below 1"), ("<lora:x:1:dyn=2.5>", "whole number")):
        request = parse_prompt(text)
        assert not request.entries and fault in request.errors[0].message, text


def test_a_new_stack_field_with_a_schedule_carries_the_count_mark() -> None:
    records = [StackRecord(E("a", 1.0, 1.0, start=3, stop=9), "0123456789ab"), StackRecord(E("b", 0.5, 0.5), None)]
    value = stack_value(records)
    assert value.split("; ")[0] == SCHEDULE_MARK
    back, problems = parse_stack_value(value)
    assert not problems and [r.entry for r in back] == [r.entry for r in records]
    assert not legacy_schedules(value)
    plain = stack_value([StackRecord(E("b", 0.5, 0.5), None)])
    assert SCHEDULE_MARK not in plain and not legacy_schedules(plain)  # no schedule: the field is as it always was


def test_an_old_stack_field_pastes_to_the_same_steps() -> None:
    old = "a@0123456789ab:1:start=3:stop=9; b@-:0.5:0.5:step=0-4; c@-:0.7"
    assert legacy_schedules(old)
    records, problems = parse_stack_value(old)
    assert not problems
    assert [(r.entry.name, r.entry.start, r.entry.stop) for r in records] == [("a", 4, 10), ("b", 1, 5), ("c", None, None)]
    # the old count ran "a" on the 0-based steps 3…8; the new values run it on exactly those steps
    for step in range(12):
        assert schedule_active(4, 10, step) == (3 <= step < 9)
    # and the prompt pasted with it moves the same way, text around the tags untouched
    prompt = "photo <lora:a:1:start=3:stop=9>, (red:1.2) <lyco:b:0.5:step=0-4> <lora:c:0.7> <lora:d:1:start=x>"
    assert shift_schedules(prompt) == "photo <lora:a:1:start=4:stop=10>, (red:1.2) <lyco:b:0.5:step=1-5> <lora:c:0.7> <lora:d:1:start=x>"
