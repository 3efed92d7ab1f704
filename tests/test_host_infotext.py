"""Infotext fields: the WebUI's Lora hashes format, the LoRA stack field, and untrusted pasted text."""

from __future__ import annotations

from lib_lorastack.host.infotext import (
    EMPTY_SHORT_HASH,
    MAX_FIELD_CHARS,
    StackRecord,
    errors_value,
    lora_hashes_value,
    parse_lora_hashes,
    parse_stack_value,
    repair_pasted_prompt,
    stack_value,
)
from lib_lorastack.syntax import StackEntry


def test_lora_hashes_is_written_and_read_as_the_webui_does() -> None:
    # the built-in removes ':' and ',' from names, keeps the first position of a repeated name
    value = lora_hashes_value([("a:b,c", "0123456789ab"), ("x", "ffffffffffff"), ("a:b,c", "aaaaaaaaaaaa")])
    assert value == "abc: aaaaaaaaaaaa, x: ffffffffffff"
    table, problems = parse_lora_hashes(value)
    assert table == {"abc": "aaaaaaaaaaaa", "x": "ffffffffffff"} and not problems


def test_malformed_and_oversized_hash_fields_are_refused_with_a_message() -> None:
    table, problems = parse_lora_hashes("good: 0123456789ab, evil: ../../etc/passwd, nohash, weird: zz")
    assert table == {"good": "0123456789ab"} and len(problems) == 3
    table, problems = parse_lora_hashes("x: 0123456789ab, " * (MAX_FIELD_CHARS // 10))
    assert table == {} and "more than" in problems[0]
    assert parse_lora_hashes(12)[0] == {}


def test_stack_field_round_trips_odd_names() -> None:
    records = [
        StackRecord(StackEntry("a;b@c%d", 0.8, 0.8), "0123456789ab"),
        StackRecord(StackEntry("plain", 1.0, 0.5, lbw="1,0,1", start=3, stop=9, dyn=8), None),
    ]
    back, problems = parse_stack_value(stack_value(records))
    assert not problems
    assert [(r.entry, r.short_hash) for r in back] == [(r.entry, r.short_hash) for r in records]


def test_stack_field_refuses_malformed_parts() -> None:
    back, problems = parse_stack_value("ok@0123456789ab:1; nohash:1; bad@0123456789ab:0.8x; inject@-:1><lora:x")
    assert [r.entry.name for r in back] == ["ok"] and len(problems) == 3


def test_paste_repairs_names_by_hash_never_through_the_empty_hash() -> None:
    local = {"0123456789ab": "my_char_v2", EMPTY_SHORT_HASH: "whatever"}.get
    prompt = "a <lora:char:0.8> b <lyco:style:1:lbw=OUTALL> c <lora:empty:1> <lora:gone:1> <lora:nohash:1>"
    hashes = {"char": "0123456789ab", "style": "0123456789abcdef", "empty": EMPTY_SHORT_HASH, "gone": "ffffffffffff"}
    out, messages = repair_pasted_prompt(prompt, hashes, local)
    assert out == "a <lora:my_char_v2:0.8> b <lyco:my_char_v2:1:lbw=OUTALL> c <lora:empty:1> <lora:gone:1> <lora:nohash:1>"
    assert any("empty" in m for m in messages) and any("ffffffffffff" in m for m in messages)


def test_errors_field_is_one_bounded_line() -> None:
    text = errors_value(["line one\nline two", "x" * 5000])
    assert "\n" not in text and len(text) <= 2000
