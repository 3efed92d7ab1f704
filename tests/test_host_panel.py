"""The stack panel's model: rows, the JSON schema (state and API argument), sync with the prompt, summary."""

from __future__ import annotations

import json

import pytest

from lib_lorastack.host.panel import (
    PanelState,
    Row,
    add_row,
    edit_row,
    move_in_stack,
    move_row,
    panel_tags,
    parse_state,
    prompt_problems,
    remove_row,
    set_in_prompt,
    summary,
    sync_with_prompt,
)
from lib_lorastack.syntax import parse_prompt


def entries(prompt: str) -> list[tuple]:
    return [(e.name, e.te, e.unet, e.lbw, e.start, e.stop) for e in parse_prompt(prompt).entries]


def test_json_round_trip_and_the_list_shorthand() -> None:
    state = PanelState((Row("a", 0.8, 0.5, False, "OUTALL", 2, 10), Row("b", in_prompt=True, enabled=False)), 0.9, "online")
    back = parse_state(state.to_json())
    assert back.state == state and not back.problems
    short = parse_state([{"name": "x", "te": 0.5}])
    assert short.state.rows == (Row("x", 0.5, 0.5),) and not short.problems


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("{not json", "not JSON"),
        (42, "expected an object"),
        ({"rows": "a"}, "'rows' must be a list"),
        ({"rows": [{"lora": "a", "te": "lots"}]}, "row 1: te 'lots' is not a number"),
        ({"rows": [{"lora": "a", "te": float("nan")}]}, "row 1: te"),
        ({"rows": [{"lora": "a:b"}]}, "not a LoRA name"),
        ({"rows": [{"lora": "a", "lbw": "1,2,q"}]}, "row 1: lbw"),
        ({"rows": [{"lora": "a", "start": 5, "stop": 3}]}, "stop 3 must be after start 5"),
        ({"rows": [{"lora": "a", "start": -1}]}, "start must be a whole number"),
        ({"rows": [{"lora": "a", "enabled": "yes"}]}, "enabled must be true or false"),
        ({"rows": [{"lora": "a", "colour": 1}]}, "unknown field(s) 'colour'"),
        ({"rows": [], "mode": "warp"}, "mode 'warp'"),
        ({"rows": [], "multiplier": "x"}, "multiplier"),
        ("x" * 70000, "more than"),
    ],
)
def test_malformed_arguments_are_named_and_the_rest_stays(value, needle) -> None:
    parsed = parse_state(value)
    assert any(needle in p for p in parsed.problems), parsed.problems


def test_a_bad_row_is_left_out_and_the_others_kept() -> None:
    parsed = parse_state({"rows": [{"lora": "a", "te": 0.5}, {"lora": "b", "te": "x"}, {"lora": "c"}]})
    assert [r.lora for r in parsed.state.rows] == ["a", "c"] and len(parsed.problems) == 1


def test_prompt_tags_become_rows_and_follow_the_prompt() -> None:
    state = PanelState((Row("panel_only", 0.4),))
    prompt = "a cat <lora:a:0.8> (red:1.2) <lyco:b:1:0.5:lbw=OUTALL>"
    state = sync_with_prompt(state, prompt)
    # stack order: the prompt's tags first, then the panel's own rows (as the summary, infotext and presets list them)
    assert [(r.lora, r.in_prompt) for r in state.rows] == [("a", True), ("b", True), ("panel_only", False)]
    assert state.rows[1].lbw == "OUTALL" and state.rows[1].linked is False
    state = sync_with_prompt(state, "a cat <lora:a:0.3>")  # b's tag deleted, a's changed
    assert [(r.lora, r.te) for r in state.rows] == [("a", 0.3), ("panel_only", 0.4)]


def test_editing_a_prompt_row_rewrites_only_its_tag() -> None:
    prompt = "a cat, <lora:a:0.8> , BREAK (<lora:b:1:hr=0>:1.1) tail"
    state = sync_with_prompt(PanelState(), prompt)
    state, new = edit_row(state, prompt, 1, te=0.25)
    assert new == "a cat, <lora:a:0.8> , BREAK (<lora:b:0.25:hr=0>:1.1) tail"
    assert entries(new)[1][:3] == ("b", 0.25, 0.25)
    state, new = edit_row(state, new, 0, linked=False, unet=0.1)
    assert entries(new)[0][:3] == ("a", 0.8, 0.1)
    state, new = edit_row(state, new, 0, lbw="OUTALL", start=3)
    assert entries(new)[0] == ("a", 0.8, 0.1, "OUTALL", 3, None)
    state, new = edit_row(state, new, 0, enabled=False)  # a disabled prompt row takes its tag out
    assert [e[0] for e in entries(new)] == ["b"] and state.rows[0].in_prompt


def test_rows_move_into_the_prompt_and_back_and_are_removed_with_their_tags() -> None:
    prompt = "a cat"
    state = add_row(PanelState(), "x", 0.7)
    state, prompt = set_in_prompt(state, prompt, 0, True)
    assert prompt == "a cat <lora:x:0.7>" and state.rows[0].in_prompt
    state, prompt = set_in_prompt(state, prompt, 0, False)
    assert prompt == "a cat" and not state.rows[0].in_prompt
    state, prompt = set_in_prompt(state, prompt, 0, True)
    state, prompt = remove_row(state, prompt, 0)
    assert prompt == "a cat" and state.rows == ()


def test_panel_only_rows_apply_and_the_prompt_wins() -> None:
    state = PanelState((Row("a", 0.5), Row("b", 0.5, 0.2, False, "OUTALL", 1, 9), Row("c", enabled=False), Row("")), 2.0)
    tags, notes = panel_tags(state, "x <lora:a:1>")
    assert tags == [["b", "0.5", "0.2", "lbw=OUTALL", "start=1", "stop=9"]]
    assert notes and "a:" in notes[0] and "prompt" in notes[0]


def test_summary_lines() -> None:
    state = PanelState((Row("p1", 0.5, 0.5),), 1.0)
    lines = summary(state, "x <lora:a:0.8> <lora:b:1:0.5:lbw=OUTALL:start=3>", known=["a", "p1"], wrong_family=["p1"])
    assert lines[0] == "3 LoRAs: a 0.8, b 1/0.5 lbw=OUTALL steps 3-∞, p1 0.5 (panel)"
    assert "b: no such LoRA" in lines and "p1: made for another base model" in lines
    many = summary(PanelState(tuple(Row(f"r{i}", 0.3) for i in range(5))), "")
    assert any(line.startswith("5+ LoRAs tend to make artefacts") for line in many)
    heavy = summary(PanelState((Row("a", 2.0), Row("b", 1.5))), "")
    assert any("past" in line for line in heavy)
    assert summary(PanelState(), "plain") == ["No LoRA in the stack."]


def test_move_row() -> None:
    state = PanelState((Row("a"), Row("b"), Row("c")))
    assert [r.lora for r in move_row(state, 0, 1).rows] == ["b", "a", "c"]
    assert move_row(state, 0, -1) == state
    assert json.loads(state.to_json())["rows"][2]["lora"] == "c"


def test_a_switched_off_prompt_row_stays_among_the_prompt_rows() -> None:
    prompt = "x <lora:a:1> <lora:b:1>"
    state = sync_with_prompt(PanelState((Row("p", 0.5),)), prompt)
    state, prompt = edit_row(state, prompt, 0, enabled=False)
    state = sync_with_prompt(state, prompt + " more words")
    assert [(r.lora, r.enabled, r.in_prompt) for r in state.rows] == [("b", True, True), ("a", False, True), ("p", True, False)]


def test_moving_rows_follows_the_stack() -> None:
    prompt = "x, <lora:a:1>, y <lora:b:0.5>"
    state = sync_with_prompt(PanelState((Row("p"), Row("q"))), prompt)
    state, prompt, note = move_in_stack(state, prompt, 0, 1)  # prompt rows: their tags swap places in the prompt
    assert prompt == "x, <lora:b:0.5>, y <lora:a:1>" and [r.lora for r in state.rows] == ["b", "a", "p", "q"] and note is None
    state, prompt, note = move_in_stack(state, prompt, 2, 1)
    assert [r.lora for r in state.rows] == ["b", "a", "q", "p"] and note is None
    same, _, note = move_in_stack(state, prompt, 1, 1)  # a prompt row cannot go below a panel row
    assert same == state and "prompt's tags come first" in note


def test_every_tag_problem_the_job_reports_is_in_the_summary() -> None:
    prompt = "a <lora:x:0.8x> <lora:y:1:lbw=ZZ>"
    problems = prompt_problems(prompt)
    assert problems[0] == "<lora:x:0.8x>: TE strength '0.8x' is not a number; this tag is ignored"
    assert any(p.startswith("<lora:y:1:lbw=ZZ>: ") and "ZZ" in p for p in problems)
    assert summary(PanelState(), "a <lora:x:0.8x>")[1:] == problems[:1]


def test_preset_tags_expand_in_the_summary() -> None:
    lines = summary(PanelState((Row("c", 0.3, 0.3),)), "photo, <lorastack:brand>", expanded="photo, <lora:a:0.8> <lora:b:0.6>", known=["a", "b", "c"])
    assert lines[0] == "3 LoRAs: a 0.8 (preset), b 0.6 (preset), c 0.3 (panel)"
    assert summary(PanelState(), "photo, <lorastack:brand>")[0] == "No LoRA in the stack."


def test_loading_a_preset_takes_its_tag_out_of_the_prompt() -> None:
    from lib_lorastack.host.preset_rows import remove_preset_tags

    assert remove_preset_tags("photo, <lorastack:brand>, red", "brand") == ("photo, red", 1)
    assert remove_preset_tags("photo <lorastack:brand:0.5> <lorastack:other>", "brand") == ("photo <lorastack:other>", 1)
