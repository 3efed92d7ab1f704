"""The prompt grammar, table-driven: what each form means, and every mistake's diagnostic."""

from __future__ import annotations

import pytest

from lib_lorastack.syntax import StackEntry, format_request, parse_prompt

E = StackEntry

# (prompt, expected entries) — the WebUI's own precedence rules, then lora-block-weight's keys.
CASES = [
    ("<lora:a>", [E("a")]),
    ("<lora:a:0.7>", [E("a", 0.7, 0.7)]),
    ("<lora:a:0.7:0.2>", [E("a", 0.7, 0.2)]),
    ("<lora:a:0.7:0.2:16>", [E("a", 0.7, 0.2, dyn=16)]),
    ("<lora:x:0.5:te=1>", [E("x", 1.0, 1.0)]),  # unet defaults to te *after* the named override
    ("<lora:x:0.5:unet=0.1>", [E("x", 0.5, 0.1)]),
    ("<lora:x:te=0.3:unet=0.9>", [E("x", 0.3, 0.9)]),
    ("<lora:x:0.5:0.6:te=0.1>", [E("x", 0.1, 0.6)]),
    ("<lora:x:1:dyn=8>", [E("x", dyn=8)]),
    ("<lora:x:1:1:4:dyn=8>", [E("x", dyn=8)]),
    ("<lyco:x:0.4>", [E("x", 0.4, 0.4)]),
    ("<lora:x:-1.5>", [E("x", -1.5, -1.5)]),
    ("<lora:my lora v1.5 (anime) [best]:1>", [E("my lora v1.5 (anime) [best]")]),
    ("<lora:キャラ:1>", [E("キャラ")]),
    ("<lora:x:1:lbw=OUTALL>", [E("x", lbw="OUTALL")]),
    ("<lora:x:1:w=INS>", [E("x", lbw="INS")]),
    ("<lora:x:1:lbw=1,0,R,U,X,X+0.5,X-1,0,0,0,0,0,0,0,0,0,0:x=0.3>", [E("x", lbw="1,0,R,U,X,X+0.5,X-1,0,0,0,0,0,0,0,0,0,0", x=0.3)]),
    ("<lora:x:1:lbwe=ATTNDEEPOFF>", [E("x", lbwe="ATTNDEEPOFF")]),
    ("<lora:x:1:start=5>", [E("x", start=5)]),
    ("<lora:x:1:stop=12>", [E("x", stop=12)]),
    ("<lora:x:1:step=5-20>", [E("x", start=5, stop=20)]),
    ("<lora:x:1:OUTALL>", [E("x", lbw="OUTALL")]),  # legacy third-place preset
    ("<lora:x:0.8:OUTS:0.5>", [E("x", 0.8, 0.8, lbw="OUTS", x=0.5)]),
    ("a <lora:a:1> b <hypernet:h:1> <lora:b:0.5>", [E("a"), E("b", 0.5, 0.5)]),
    ("no tags at all", []),
]


@pytest.mark.parametrize(("prompt", "expected"), CASES, ids=[c[0][:40] for c in CASES])
def test_forms(prompt: str, expected: list[StackEntry]) -> None:
    request = parse_prompt(prompt)
    assert list(request.entries) == expected
    assert parse_prompt(format_request(request)) == request


ERRORS = [
    ("<lora:x:0.8x>", "bad-number", "'0.8x'"),
    ("<lora:x:1:abc>", "bad-number", "'abc'"),
    ("<lora:x:nan>", "bad-number", "finite"),
    ("<lora:x:1:te=>", "bad-number", "te="),
    ("<lora:x:1:1:4.5>", "bad-number", "whole number"),
    ("<lora:x:1:dyn=0>", "bad-number", "below 1"),
    ("<lora::1>", "no-name", "no LoRA name"),
    ("<lora:te=1>", "no-name", "no LoRA name"),
    ("<lora:x:1:step=5>", "bad-schedule", "FROM-TO"),
    ("<lora:x:1:start=-2>", "bad-number", "below 0"),
    ("<lora:x:1:lbw=1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,q>", "bad-vector", "'q'"),
    ("<lora:x:0@0,1@10>", "unsupported-syntax", "loractl"),
]


@pytest.mark.parametrize(("prompt", "kind", "fragment"), ERRORS)
def test_a_bad_tag_disables_only_itself(prompt: str, kind: str, fragment: str) -> None:
    request = parse_prompt(f"<lora:good:0.5> {prompt} <lora:also_good:1>")
    assert [e.name for e in request.entries] == ["good", "also_good"]
    errors = [d for d in request.diagnostics if d.severity == "error"]
    assert len(errors) == 1
    assert errors[0].kind == kind and fragment in errors[0].message
    start, end = errors[0].span
    assert 16 <= start < end <= 16 + len(prompt)  # the span points into the bad tag


WARNINGS = [
    ("<lora:x:1:OUTALL>", "legacy-preset", "lbw=OUTALL"),
    ("<lora:x:1:lbw=NOPE>", "unknown-preset", "'NOPE'"),
    ("<lora:x:1:lbw=1,0,0>", "unknown-preset", "3 values"),
    ("<lora:x:1:foo=2>", "unknown-argument", "'foo'"),
    ("<lora:x:1:start=9:stop=3>", "bad-schedule", "never active"),
]


@pytest.mark.parametrize(("prompt", "kind", "fragment"), WARNINGS)
def test_warnings_keep_the_tag(prompt: str, kind: str, fragment: str) -> None:
    request = parse_prompt(prompt)
    assert len(request.entries) == 1
    assert any(d.kind == kind and d.severity == "warning" and fragment in d.message for d in request.diagnostics)


def test_negative_prompt_tags_are_not_activated_and_warned() -> None:
    request = parse_prompt("a cat <lora:a:1>", "blurry <lora:bad:1>")
    assert request.names() == ["a"]
    (diag,) = request.diagnostics
    assert diag.kind == "negative-prompt" and diag.source == "negative"
    assert "blurry <lora:bad:1>"[diag.span[0] : diag.span[1]] == "<lora:bad:1>"


def test_duplicate_rule_last_tag_wins_once() -> None:
    request = parse_prompt("<lora:a:0.3> <lora:b:1> <lora:a:0.9:0.1>")
    assert list(request.entries) == [E("b"), E("a", 0.9, 0.1)]
    (diag,) = request.diagnostics
    assert diag.kind == "duplicate" and diag.span == (0, 12)


def test_tags_are_removed_from_the_text_prompt() -> None:
    assert parse_prompt("a <lora:x:1>cat").prompt == "a cat"


def test_user_presets_make_the_legacy_form_known() -> None:
    request = parse_prompt("<lora:x:1:MINE>", presets={"MINE": ",".join(["1"] * 17)})
    assert request.entries[0].lbw == "MINE"
    assert parse_prompt("<lora:x:1:MINE>").errors  # unknown without the preset: a bad number


def test_stack_order_is_the_webuis_lora_tags_then_lyco_tags() -> None:
    """The WebUI groups tags by kind (its alias lookup), kinds in order of first appearance."""
    assert parse_prompt("<lora:a:1> <lyco:b:1> <lora:c:1>").names() == ["a", "c", "b"]
    assert parse_prompt("<lyco:b:1> x <lora:a:1> <lyco:d:1>").names() == ["b", "d", "a"]
    # the later copy of a repeated LoRA is the later one in that order
    r = parse_prompt("<lora:a:0.2> <lyco:a:0.9> <lora:a:0.5>")
    assert [(e.name, e.te) for e in r.entries] == [("a", 0.9)]
