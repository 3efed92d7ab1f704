"""Rewriting the user's prompt: one tag changes, the rest of the text stays byte-identical, and the parser reads
back exactly what was asked for."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from lib_lorastack.syntax import (
    StackEntry,
    add_lora_tag,
    add_words,
    find_lora_tags,
    has_words,
    parse_prompt,
    remove_lora_tags,
    remove_words,
    set_lora_tag,
)

E = StackEntry
VECTOR17 = "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"


def entry_of(text: str, name: str) -> StackEntry | None:
    found = [e for e in parse_prompt(text).entries if e.name == name]
    return found[0] if found else None


def assert_only_tag_changed(before: str, after: str, old_span: tuple[int, int], new_span: tuple[int, int]) -> None:
    assert after[: new_span[0]] == before[: old_span[0]]
    assert after[new_span[1] :] == before[old_span[1] :]


# Every form of docs/syntax.md, then what a rewrite to new values must give.
DOC_FORMS = [
    "<lora:NAME>",
    "<lora:NAME:0.7>",
    "<lora:NAME:0.7:0.3>",
    "<lora:NAME:0.7:0.3:16>",
    "<lora:NAME:0.5:te=1>",
    "<lora:NAME:0.5:unet=0.2>",
    "<lora:NAME:1:dyn=8>",
    "<lyco:NAME:0.6>",
    "<lora:NAME:1:lbw=OUTALL>",
    "<lora:NAME:1:w=OUTALL>",
    f"<lora:NAME:1:lbw={VECTOR17}>",
    "<lora:NAME:1:lbw=1,R,U,X,X+0.5,0,0,0,0,0,0,0,0,0,0,0,0:x=0.3>",
    "<lora:NAME:1:lbwe=ATTNDEEPOFF>",
    "<lora:NAME:1:start=5>",
    "<lora:NAME:1:stop=20>",
    "<lora:NAME:1:step=5-20>",
    "<lora:NAME:1:OUTALL>",
    "<lora:NAME:0.8:OUTS:0.5>",
    "<lora:NAME:1:foo=2>",
    "<lora:NAME:1:1:4:dyn=8>",
    "<lora:NAME:te=0.3:unet=0.9>",
]
TARGETS = [
    E("NAME", 0.7, 0.7),
    E("NAME", 0.7, 0.3),
    E("NAME", -1.25, 2.0, dyn=4),
    E("NAME", 1.0, 1.0, lbw="INS", x=0.5),
    E("NAME", 0.5, 0.5, lbw=VECTOR17, lbwe="ATTNDEEPON", start=3, stop=12),
    E("NAME"),
]


@pytest.mark.parametrize("form", DOC_FORMS)
@pytest.mark.parametrize("target", TARGETS, ids=lambda e: f"{e.te}/{e.unet}/{e.lbw}")
def test_every_documented_form_rewrites_to_the_requested_values(form: str, target: StackEntry) -> None:
    text = f"masterpiece, {form}, 1girl"
    edit = set_lora_tag(text, target)
    assert edit.span is not None
    assert entry_of(edit.text, "NAME") == target
    assert not parse_prompt(edit.text).errors
    start = text.index("<")
    assert_only_tag_changed(text, edit.text, (start, start + len(form)), edit.span)
    assert edit.text[edit.span[0] : edit.span[1]].startswith("<lyco:" if form.startswith("<lyco") else "<lora:")


@pytest.mark.parametrize(
    ("before", "changes", "after"),
    [
        ("<lora:n:1>", {"te": 0.7, "unet": 0.7}, "<lora:n:0.7>"),
        ("<lora:n>", {"te": 0.7, "unet": 0.3}, "<lora:n:0.7:0.3>"),
        ("<lora:n:0.7:0.3>", {"unet": 0.7}, "<lora:n:0.7>"),
        ("<lyco:n:0.6>", {"te": 1, "unet": 1}, "<lyco:n:1>"),
        ("<lora:n:1:hr=0>", {"te": 0.5, "unet": 0.5}, "<lora:n:0.5:hr=0>"),
        ("<lora:n:1:lbw=OUTALL:hr=0:start=2>", {"lbw": "INS"}, "<lora:n:1:lbw=INS:hr=0:start=2>"),
        ("<lora:n:1:lbw=OUTALL:hr=0>", {"lbw": None}, "<lora:n:1:hr=0>"),
        ("<lora:n:0.5:te=1>", {"te": 0.8}, "<lora:n:0.8:1>"),  # unet was 1 (te after te=): it stays 1
        ("<lora:n:0.5:te=1>", {"unet": 0.2}, "<lora:n:1:0.2>"),
        ("<lora:n:0.7:0.3:16>", {"te": 0.5}, "<lora:n:0.5:0.3:dyn=16>"),
        ("<lora:n:1:dyn=8>", {"dyn": 4}, "<lora:n:1:dyn=4>"),
        ("<lora:n:1:OUTALL>", {"x": 0.5}, "<lora:n:1:lbw=OUTALL:x=0.5>"),
        ("<lora:n:0.8:OUTS:0.5>", {"te": 0.6, "unet": 0.6}, "<lora:n:0.6:lbw=OUTS:x=0.5>"),
        ("<lora:n:1:step=5-20:hr=0>", {"stop": 25}, "<lora:n:1:start=5:stop=25:hr=0>"),
        ("<lora:n:1:w=INS>", {"te": 2, "unet": 2}, "<lora:n:2:lbw=INS>"),
        ("<lora:n:1:w=INS:lbw=OUTS>", {"te": 2, "unet": 2}, "<lora:n:2:lbw=OUTS>"),  # lbw= wins over w=
        ("<lora:n:1:start=1:start=3>", {"stop": 9}, "<lora:n:1:start=3:stop=9>"),  # the last repeat counts
        ("<lora:n:1:1:4:7>", {"te": 0.5, "unet": 0.5}, "<lora:n:0.5:dyn=4>"),  # ignored extra values dropped
        ("<lora:n:1>", {"lbw": "OUTS", "start": 2}, "<lora:n:1:lbw=OUTS:start=2>"),
        ("<lora:n:0.70>", {"te": 0.7, "unet": 0.7}, "<lora:n:0.70>"),  # same values: untouched
        ("<lora:n:1:foo=1:bar=2>", {"unet": 0}, "<lora:n:1:0:foo=1:bar=2>"),
    ],
)
def test_rewrite_forms(before: str, changes: dict, after: str) -> None:
    edit = set_lora_tag(f"a, {before}, b", "n", **changes)
    assert edit.text == f"a, {after}, b"
    assert edit.span == (3, 3 + len(after))
    assert edit.changed == (before != after)
    expected = dataclasses.replace(entry_of(before, "n"), **changes)
    assert entry_of(edit.text, "n") == expected


def test_a_stack_entry_sets_every_value_and_keyword_changes_apply_on_top() -> None:
    text = "<lora:n:1:lbw=OUTALL:start=4>"
    assert set_lora_tag(text, E("n", 0.5, 0.5)).text == "<lora:n:0.5>"
    assert set_lora_tag(text, E("n", 0.5), stop=9).text == "<lora:n:0.5:1:stop=9>"


def test_no_tag_no_change_and_names_are_exact() -> None:
    text = "a <lora:Name:1> b"
    for name in ("name", "Nam", "Name ", "other"):
        edit = set_lora_tag(text, name, te=0.5)
        assert edit == type(edit)(text, None, False)
        assert remove_lora_tags(text, name).text == text
    assert set_lora_tag(text, "Name", te=0.5, unet=0.5).text == "a <lora:Name:0.5> b"


def test_odd_spacing_keeps_the_name_as_the_webui_reads_it() -> None:
    text = "a, <lora: x :0.5>, b"
    assert parse_prompt(text).names() == [" x "]
    assert set_lora_tag(text, "x", te=1).span is None  # the name is " x ", spaces included
    edit = set_lora_tag(text, " x ", te=1, unet=1)
    assert edit.text == "a, <lora: x :1>, b"
    assert entry_of(edit.text, " x ") == E(" x ")
    assert remove_lora_tags(text, " x ").text == "a, b"
    # spaces around numbers are fine for the parser; the rewrite writes the number plainly
    assert set_lora_tag("<lora:y: 0.5 : 0.2 >", "y", unet=0.5).text == "<lora:y:0.5>"


@pytest.mark.parametrize("name", ["キャラ", "my lora v1.5 (anime) [best]", "a.b.c", "ü-ß_name", "a=b=c", "x [v2]"])
def test_unicode_and_odd_names(name: str) -> None:
    text = f"1girl, <lora:{name}:0.4>, smile"
    edit = set_lora_tag(text, name, te=0.9, unet=0.1, lbw="INS")
    assert edit.text == f"1girl, <lora:{name}:0.9:0.1:lbw=INS>, smile"
    assert remove_lora_tags(edit.text, name).text == "1girl, smile"
    added = add_lora_tag("1girl", name, te=0.5, unet=0.5)
    assert added.text == f"1girl <lora:{name}:0.5>"
    assert entry_of(added.text, name) == E(name, 0.5, 0.5)


def test_duplicates_the_counting_tag_is_rewritten_the_others_stay() -> None:
    text = "<lora:a:0.3>, red, <lyco:a:0.6:hr=1> BREAK blue"
    assert [t.counts for t in find_lora_tags(text, "a")] == [False, True]
    edit = set_lora_tag(text, "a", te=1, unet=1)
    assert edit.text == "<lora:a:0.3>, red, <lyco:a:1:hr=1> BREAK blue"
    assert entry_of(edit.text, "a") == E("a")
    assert [d.kind for d in parse_prompt(edit.text).diagnostics].count("duplicate") == 1
    dropped = set_lora_tag(text, "a", te=1, unet=1, drop_duplicates=True)
    assert dropped.text == "red, <lyco:a:1:hr=1> BREAK blue"
    assert dropped.text[dropped.span[0] : dropped.span[1]] == "<lyco:a:1:hr=1>"
    assert [d.kind for d in parse_prompt(dropped.text).diagnostics] == ["unknown-argument"]


def test_duplicates_a_later_broken_tag_does_not_count() -> None:
    text = "<lora:a:0.3> <lora:a:0.8x>"
    tags = find_lora_tags(text, "a")
    assert [t.counts for t in tags] == [True, False] and tags[1].entry is None
    edit = set_lora_tag(text, "a", te=0.5)
    assert edit.text == "<lora:a:0.5:0.3> <lora:a:0.8x>"
    assert entry_of(edit.text, "a") == E("a", 0.5, 0.3)
    only_broken = "x <lora:a:bad> <lora:a:worse>"
    edit = set_lora_tag(only_broken, "a", te=0.5, unet=0.5)  # none accepted: the last one becomes the one that counts
    assert edit.text == "x <lora:a:bad> <lora:a:0.5>"
    assert parse_prompt(edit.text).entries == (E("a", 0.5, 0.5),)
    assert set_lora_tag(only_broken, "a", te=0.5, drop_duplicates=True).text == "x <lora:a:0.5:1>"


def test_remove_every_tag_of_the_name() -> None:
    text = "<lora:a:0.3>, red, <lyco:a:0.6:lbw=OUTS>, blue <lora:b:1>"
    edit = remove_lora_tags(text, "a")
    assert edit.text == "red, blue <lora:b:1>"
    assert edit.span == (0, 0)
    assert parse_prompt(edit.text).names() == ["b"]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("a, <lora:x:1>, b", "a, b"),
        ("a <lora:x:1> b", "a b"),
        ("a,<lora:x:1>,b", "a,b"),
        ("<lora:x:1>, a", "a"),
        ("<lora:x:1> a", "a"),
        ("a, <lora:x:1>", "a"),
        ("a <lora:x:1>", "a"),
        ("a, b <lora:x:1>, c", "a, b, c"),
        ("a, <lora:x:1> b", "a, b"),
        ("<lora:x:1>", ""),
        ("(<lora:x:1>, red:1.2)", "(red:1.2)"),
        ("(red, <lora:x:1>:1.2)", "(red, :1.2)"),
        ("(red, <lora:x:1>)", "(red)"),
        ("[<lora:x:1> red]", "[red]"),
        ("{a|<lora:x:1>, b}", "{a|b}"),
        ("a BREAK <lora:x:1>, b", "a BREAK b"),
        ("a, <lora:x:1> BREAK b", "a BREAK b"),
        ("a, <lora:x:1>BREAK b", "a BREAK b"),
        ("a BREAK <lora:x:1>", "a BREAK"),
        ("line one,\n<lora:x:1>, line two", "line one,\nline two"),
        ("line one, <lora:x:1>\nline two", "line one\nline two"),
        ("a,\n<lora:x:1>\nb", "a,\n\nb"),
        ("a,  <lora:x:1>,  b", "a,  b"),
        ("a <lora:x:1> , b", "a , b"),
        ("a\t<lora:x:1>\tb", "a\tb"),
        ("a, <lora:x:1> <lora:x:0.5>, b", "a, b"),
        ("masterpiece, best quality, <lora:x:1>, <lora:y:1>", "masterpiece, best quality, <lora:y:1>"),
        ("<lora<lora:x:1>:y:1>", "<lora :y:1>"),  # the halves must not fuse into a new tag
    ],
)
def test_remove_tidies_only_the_separator_it_leaves(before: str, after: str) -> None:
    edit = remove_lora_tags(before, "x")
    assert edit.text == after
    assert "x" not in parse_prompt(edit.text).names()


def test_add_tag_and_round_trips() -> None:
    assert add_lora_tag("", "n").text == "<lora:n:1>"
    assert add_lora_tag("a", E("n", 0.5, 0.25, lbw="INS"), separator=", ").text == "a, <lora:n:0.5:0.25:lbw=INS>"
    assert add_lora_tag("a", E("n", tag="lyco")).text == "a <lyco:n:1>"
    assert add_lora_tag("a, b, ", "n", te=0.5, unet=0.5).text == "a, b <lora:n:0.5>, "
    assert add_lora_tag("a\n", "n").text == "a <lora:n:1>\n"
    present = "<lora:n:1:hr=0> a"
    assert add_lora_tag(present, "n", te=0.5).text == "<lora:n:0.5:1:hr=0> a"  # update when present
    for text in ("", "a", "a, b, ", "a\n\n", "a, (b:1.2)", "   ", "a BREAK b", "x <lora:m:1>"):
        added = add_lora_tag(text, E("n", 0.7, 0.2, start=3))
        assert entry_of(added.text, "n") == E("n", 0.7, 0.2, start=3)
        assert added.text[added.span[0] : added.span[1]] == "<lora:n:0.7:0.2:start=3>"
        assert remove_lora_tags(added.text, "n").text == text


def test_unwritable_values_raise_value_error_and_unknown_fields_type_error() -> None:
    text = "<lora:n:1>"
    for changes in (
        {"te": float("nan")},
        {"unet": float("inf")},
        {"dyn": 0},
        {"dyn": 2.5},
        {"start": -1},
        {"lbw": "a:b"},
        {"lbw": "a=b"},
        {"lbwe": "x>y"},
        {"lbw": "1,0,q,0,0,0,0,0,0,0,0,0"},
        {"x": "big"},
    ):
        with pytest.raises(ValueError):
            set_lora_tag(text, "n", **changes)
    for name in ("a:b", "a>b", "", "a=b"):
        with pytest.raises(ValueError):
            add_lora_tag("x", name)
    with pytest.raises(TypeError):
        set_lora_tag(text, "n", weight=1)


def test_a_tag_that_does_not_parse_is_rewritten_from_defaults() -> None:
    edit = set_lora_tag("<lora:n:0.8x:lbw=q>", "n", unet=0.5)
    assert edit.text == "<lora:n:1:0.5>"
    assert parse_prompt(edit.text).entries == (E("n", 1.0, 0.5),)


def test_custom_presets_let_a_legacy_tag_count() -> None:
    text = "<lora:n:0.5:MYSET>"
    presets = {"MYSET": VECTOR17}
    assert find_lora_tags(text, "n")[0].entry is None
    edit = set_lora_tag(text, "n", presets=presets, te=0.7)
    assert edit.text == "<lora:n:0.7:0.5:lbw=MYSET>"  # unet stays what it was (te before the change)


# ------------------------------------------------------------------------------------------------------- words


@pytest.mark.parametrize(
    ("text", "words", "after"),
    [
        ("", "sks style", "sks style"),
        ("1girl", "sks style, red cape", "1girl, sks style, red cape"),
        ("1girl, ", "sks style", "1girl, sks style, "),
        ("1girl,\n", "sks", "1girl, sks,\n"),
        ("1girl <lora:x:1>", "sks", "1girl <lora:x:1>, sks"),
        ("(sks:1.2), a", "sks", "(sks:1.2), a, sks"),
        ("sks style", "sks", "sks style, sks"),
        ("a,sks style ,b", "sks style", "a,sks style ,b"),  # already present: nothing added
        ("a, sks\nb", "  sks  ,", "a, sks\nb"),
        ("a", " , ", "a"),
    ],
)
def test_add_words(text: str, words: str, after: str) -> None:
    edit = add_words(text, words)
    assert edit.text == after
    assert edit.changed == (text != after)
    assert has_words(edit.text, words) or not words.strip(" ,")
    if edit.changed:
        assert remove_words(edit.text, words).text == text


@pytest.mark.parametrize(
    ("text", "words", "after"),
    [
        ("a, sks style, b", "sks style", "a, b"),
        ("sks style, a", "sks style", "a"),
        ("a, sks style", "sks style", "a"),
        ("(sks style:1.2), a", "sks style", "(sks style:1.2), a"),
        ("a sks style", "sks style", "a sks style"),
        ("sks, a, sks", "sks", "sks, a"),  # the last occurrence: the one that was appended
        ("<lora:x:1> sks style, a", "sks style", "<lora:x:1>, a"),
        ("a, red, cape, b", "red, cape", "a, b"),
        ("a, red\ncape, b", "red, cape", "a, red\ncape, b"),
        ("a BREAK red, b", "red", "a BREAK b"),
    ],
)
def test_remove_words(text: str, words: str, after: str) -> None:
    assert remove_words(text, words).text == after


# ----------------------------------------------------------------------------------------------- properties

FILLER = st.lists(
    st.sampled_from(
        ["a", "1girl", " ", ", ", ",", "\n", "(", ")", "[", "]", ":1.2", "BREAK", " BREAK ", "|", "{", "}", "é", "キャラ",
         "red hair", "\t", "  ", "<hypernet:h:1>", "x"]
    ) | st.text(alphabet=st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), max_size=3),
    max_size=8,
).map("".join)  # fmt: skip
NAMES = st.sampled_from(["a", "b", "キャラ", "my lora v1.5", "x.y", " sp "])
FORMS = st.sampled_from(
    ["{n}", "{n}:0.7", "{n}:0.7:0.3", "{n}:0.7:0.3:16", "{n}:0.5:te=1", "{n}:0.5:unet=0.2", "{n}:1:dyn=8",
     "{n}:1:lbw=OUTALL", "{n}:1:w=INS:hr=0", "{n}:1:lbwe=ATTNDEEPOFF:x=0.3", "{n}:1:step=5-20", "{n}:1:OUTALL",
     "{n}:0.8:OUTS:0.5", "{n}:1:foo=2", "{n}:-1.5", "{n}:bad", "{n}:1:start=4:stop=2"]
)  # fmt: skip
KINDS = st.sampled_from(["lora", "lyco"])
FINITE = st.floats(min_value=-10, max_value=10, allow_nan=False) | st.sampled_from([0.0, 1.0, -0.0, 0.1, 1e-7])
WANTED = st.builds(
    dict,
    te=FINITE,
    unet=FINITE,
    dyn=st.none() | st.integers(1, 64),
    lbw=st.none() | st.sampled_from(["OUTALL", "INS", "MINE", VECTOR17, "1,R,U,X,X+0.5,0,0,0,0,0,0,0"]),
    lbwe=st.none() | st.just("ATTNDEEPOFF"),
    x=st.none() | FINITE,
    start=st.none() | st.integers(0, 50),
    stop=st.none() | st.integers(0, 50),
)


@st.composite
def prompts(draw: st.DrawFn) -> str:
    pieces = [draw(FILLER)]
    for _ in range(draw(st.integers(1, 5))):
        pieces.append(f"<{draw(KINDS)}:{draw(FORMS).format(n=draw(NAMES))}>")
        pieces.append(draw(FILLER))
    return "".join(pieces)


@given(prompts(), NAMES, WANTED, st.booleans())
def test_property_set_changes_only_the_tag_and_the_parser_agrees(
    text: str, name: str, wanted: dict, by_entry: bool
) -> None:
    tags = find_lora_tags(text, name)
    target = E(name, **wanted) if by_entry else name
    edit = set_lora_tag(text, target, **({} if by_entry else wanted))
    if not tags:
        assert edit.text == text and edit.span is None
        return
    counting = [t for t in tags if t.counts] or [tags[-1]]
    assert_only_tag_changed(text, edit.text, counting[-1].span, edit.span)
    assert entry_of(edit.text, name) == E(name, **wanted)
    others = [e for e in parse_prompt(text).entries if e.name != name]
    assert [e for e in parse_prompt(edit.text).entries if e.name != name] == others


@given(prompts(), NAMES)
def test_property_remove_leaves_no_such_lora_and_the_others_intact(text: str, name: str) -> None:
    edit = remove_lora_tags(text, name)
    after = parse_prompt(edit.text)
    assert name not in after.names()
    # the same LoRAs stay; their order may change, since the WebUI stacks tag kinds by first appearance and the
    # removed tag may have been the first of its kind
    assert sorted(after.names()) == sorted(n for n in parse_prompt(text).names() if n != name)
    assert edit.changed == any(t.name == name for t in find_lora_tags(text))
    # what is left is a subsequence of the text (a space may be added to keep two halves apart)
    kept = iter(text)
    assert all(any(c == k for k in kept) for c in edit.text if c != " ")


@given(FILLER, NAMES, WANTED)
def test_property_add_then_remove_tag_gives_back_the_text(text: str, name: str, wanted: dict) -> None:
    core = re.sub(r"[\s,]*\Z", "", text)
    # the one documented exception: "(, " + tag, removed, gives "(" (the comma reads as the tag's separator)
    assume(not ((not core or core.endswith(("(", "[", "{", "|", "BREAK"))) and "," in text[len(core) :]))
    added = add_lora_tag(text, name, **wanted)
    assert entry_of(added.text, name) == E(name, **wanted)
    assert remove_lora_tags(added.text, name).text == text


WORD = st.text(alphabet=st.characters(blacklist_characters="<>,\n\r", blacklist_categories=("Cs",)), min_size=1,
               max_size=6).filter(lambda w: w.strip() and "BREAK" not in w)  # fmt: skip


@given(prompts() | FILLER, st.lists(WORD, min_size=1, max_size=3).map(", ".join))
def test_property_add_then_remove_words_gives_back_the_text(text: str, words: str) -> None:
    assume(not has_words(text, words))
    core = re.sub(r"[\s,]*\Z", "", text)
    assume(core or "," not in text)  # ", " + words, removed, gives "" (the comma reads as their separator)
    added = add_words(text, words)
    assert added.changed and has_words(added.text, words)
    before, after = added.text[: added.span[0]], added.text[added.span[1] :]
    assert before.removesuffix(", ") + after == text
    assert parse_prompt(added.text) == parse_prompt(text)
    assert remove_words(added.text, words).text == text


FRAGMENTS = st.lists(
    st.sampled_from(["<lora:", "<lyco:", "<w:", ">", ":", "=", ",", " ", "\n", "te=", "lbw=", "step=5-", "0.5", "1",
                     "a", "b", "BREAK", "(", ")", "nan", "OUTALL", "キャラ"]) | st.text(max_size=3),
    max_size=20,
).map("".join)  # fmt: skip


@given(FRAGMENTS, st.sampled_from(["a", "b", "", "a=b", " a"]) | st.text(max_size=4), FRAGMENTS)
def test_property_user_text_never_raises(text: str, name: str, words: str) -> None:
    find_lora_tags(text)
    remove_lora_tags(text, name)
    remove_words(text, words)
    add_words(text, words)
    try:
        set_lora_tag(text, name, te=0.5)
    except ValueError:  # only for a requested value no tag can hold
        pytest.fail("set_lora_tag raised on user text")
