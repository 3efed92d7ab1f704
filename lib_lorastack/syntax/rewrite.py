"""Editing the user's prompt text: rewrite, add or remove one LoRA's tag; add or remove trigger words.

Each operation returns a ``PromptEdit``: the new text, the span of the tag or words it wrote (or the cursor
position where it removed something) and whether anything changed. Only the edited tag or words change, plus the
spaces and commas that a removal leaves dangling; every other character stays the user's. Nothing here raises on
prompt text; a *requested value* that no tag can express (``te=nan``, a name with ``:``) raises ``ValueError``.

Rules, consistent with ``parse_prompt``:

* A LoRA's tags are the ``<lora:…>`` and ``<lyco:…>`` tags whose first positional argument is exactly its name
  (case and spaces included: ``<lora: x :1>`` names `` x ``, as in the WebUI).
* **Several tags of one LoRA.** ``set_lora_tag`` rewrites the tag that counts (the last one ``parse_prompt``
  accepts; the last one of that name if none is accepted) and leaves the others as the user wrote them, unless
  ``drop_duplicates=True`` removes them. ``remove_lora_tags`` removes every tag of the name.
* A rewritten tag keeps its kind (``lyco`` stays ``lyco``), its name text and every argument we do not manage
  (``hr=0`` stays where it was). Strengths are written positionally (``:0.7`` or ``:0.7:0.3``); ``dyn``, ``lbw``,
  ``lbwe``, ``x``, ``start``, ``stop`` as named arguments, in the place of the argument they replace
  (``w=`` becomes ``lbw=``, ``step=A-B`` becomes ``start=A:stop=B``), new ones at the end. Legacy and redundant
  forms (``<lora:n:1:OUTALL>``, ``te=``, positional ``dyn``, ignored extra positional values) are normalised.
  Asking for the values a tag already has leaves it untouched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from itertools import pairwise

from .format import format_entry, format_number
from .lbw import is_vector, vector_fault
from .parse import KNOWN_NAMED, parse_prompt
from .request import StackEntry
from .tags import LORA_TAGS, TAG_RE, RawTag, find_tags

FIELDS = ("te", "unet", "dyn", "lbw", "lbwe", "x", "start", "stop")
_NAMED_FIELDS = ("dyn", "lbw", "lbwe", "x", "start", "stop")  # written as key=value, in this order when appended
_OPENERS = "\n\r([{|"
_CLOSERS = "\n\r)]}|"
_BREAK_AT_END = re.compile(r"\bBREAK\Z")
_BREAK_AT_START = re.compile(r"BREAK\b")
# What separates items of a prompt when adding or removing words: commas, line ends, tags and BREAK.
_ITEM_BOUNDARY = re.compile(r",|\r\n|\r|\n|<\w+:[^>]+>|\bBREAK\b")
_ONE_COMMA = re.compile(r"[ \t]*,[ \t]*")
_TRAILING_SEPARATORS = re.compile(r"[\s,]*\Z")
# Spaces on one line: every whitespace character but the line ends a textarea knows.
_SPACE_AT_END = re.compile(r"(?<![^\S\r\n])[^\S\r\n]*\Z")
_SPACE_AT_START = re.compile(r"\A[^\S\r\n]*")


@dataclass(frozen=True)
class PromptEdit:
    """``text``: the prompt after the edit. ``span``: where the written tag or words now are, or ``(p, p)`` where
    something was removed (for the cursor); ``None`` when nothing was found. ``changed``: the text differs."""

    text: str
    span: tuple[int, int] | None = None
    changed: bool = False


@dataclass(frozen=True)
class LoraTag:
    """One ``<lora:…>``/``<lyco:…>`` tag of a prompt. ``entry`` is what the tag alone parses to (``None`` when
    ``parse_prompt`` ignores it for an error); ``counts`` says whether it is the tag whose values the stack uses."""

    name: str
    kind: str
    span: tuple[int, int]
    entry: StackEntry | None
    counts: bool
    raw: RawTag


def find_lora_tags(text: str, name: str | None = None, *, presets: Mapping[str, str] | None = None) -> list[LoraTag]:
    """The LoRA tags of ``text`` in order, only those of ``name`` when given."""
    counting = {e.span for e in parse_prompt(text, presets=presets).entries}
    found: list[LoraTag] = []
    for raw in find_tags(text):
        tag_name = _tag_name(raw)
        if raw.kind not in LORA_TAGS or tag_name is None or (name is not None and tag_name != name):
            continue
        start, end = raw.span
        alone = parse_prompt(text[start:end], presets=presets).entries
        entry = replace(alone[0], span=raw.span) if alone else None
        found.append(LoraTag(tag_name, raw.kind, raw.span, entry, raw.span in counting, raw))
    return found


def set_lora_tag(
    text: str,
    target: StackEntry | str,
    *,
    presets: Mapping[str, str] | None = None,
    drop_duplicates: bool = False,
    **changes: object,
) -> PromptEdit:
    """Rewrite the tag of a LoRA that is in ``text``; nothing happens (``span`` None) when it has no tag.

    ``target`` is a ``StackEntry`` (all of its values are written, then ``changes`` applied) or a name (the tag's
    current values with ``changes`` applied; a tag the parser rejects starts from ``StackEntry(name)``).
    ``changes`` are fields of ``StackEntry``: te, unet, dyn, lbw, lbwe, x, start, stop (None drops an optional one).
    Only the fields given change: ``te=0.5`` on ``<lora:n:0.7>`` gives ``<lora:n:0.5:0.7>`` (pass ``unet`` too)."""
    name = target.name if isinstance(target, StackEntry) else target
    tags = find_lora_tags(text, name, presets=presets)
    if not tags:
        return PromptEdit(text)
    tag = _counting(tags)
    wanted = _wanted(target, tag.entry, changes)
    start, end = tag.span
    if tag.entry is not None and tag.entry == wanted:
        new_text, span = text, tag.span
    else:
        new_tag = _rewritten(tag.raw, wanted)
        new_text, span = text[:start] + new_tag + text[end:], (start, start + len(new_tag))
    if drop_duplicates:
        for other in reversed([t for t in tags if t is not tag]):
            before = len(new_text)
            new_text, _ = _cut(new_text, *other.span)
            if other.span[0] < start:
                shift = len(new_text) - before
                span = (span[0] + shift, span[1] + shift)
    return PromptEdit(new_text, span, new_text != text)


def add_lora_tag(
    text: str,
    target: StackEntry | str,
    *,
    separator: str = " ",
    presets: Mapping[str, str] | None = None,
    **changes: object,
) -> PromptEdit:
    """``set_lora_tag`` when the LoRA has a tag; otherwise a new canonical tag after the last item of the prompt
    (before any trailing spaces, commas and line ends, so ``remove_lora_tags`` gives the text back), joined with
    ``separator`` (the WebUI's ``extra_networks_add_text_separator``). The kind is ``target.tag`` (default lora)."""
    name = target.name if isinstance(target, StackEntry) else target
    if find_lora_tags(text, name, presets=presets):
        return set_lora_tag(text, target, presets=presets, **changes)
    wanted = _wanted(target, None, changes)
    kind = wanted.tag if wanted.tag in LORA_TAGS else "lora"
    _check_name(wanted.name)
    tag_text = _verified(f"<{kind}:{format_entry(wanted)[len('<lora:') :]}", wanted)
    new_text, span = _append(text, tag_text, separator)
    return PromptEdit(new_text, span, True)


def remove_lora_tags(text: str, name: str) -> PromptEdit:
    """Remove every tag of ``name`` and the separator each one leaves (``a, <lora:x:1>, b`` → ``a, b``).
    ``span`` is the cursor position where the first one was."""
    spans = [raw.span for raw in find_tags(text) if raw.kind in LORA_TAGS and _tag_name(raw) == name]
    if not spans:
        return PromptEdit(text)
    position = 0
    for start, end in reversed(spans):
        text_after, position = _cut(text, start, end)
        text = text_after
    return PromptEdit(text, (position, position), True)


def has_words(text: str, words: str) -> bool:
    """Whether the comma-separated ``words`` are in ``text`` as whole, consecutive items."""
    return _find_run(text, _phrase_items(words)) is not None


def add_words(text: str, words: str, *, separator: str = ", ") -> PromptEdit:
    """Append the comma-separated ``words`` (trigger words) after the last item unless they are already whole items
    of the prompt. They are written ``", "``-joined; ``span`` covers them. Tags and ``BREAK`` inside ``words`` are
    dropped (they are not words). Nothing changes (``changed`` False) when they are present or empty."""
    items = _phrase_items(words)
    if not items or _find_run(text, items) is not None:
        return PromptEdit(text)
    new_text, span = _append(text, ", ".join(items), separator)
    return PromptEdit(new_text, span, True)


def remove_words(text: str, words: str) -> PromptEdit:
    """Remove the last occurrence of ``words`` as whole consecutive items (``sks`` in ``(sks:1.2)`` or in
    ``sks style`` is not one), with the separator it leaves. ``add_words`` then ``remove_words`` gives back the
    original text. Nothing changes when the words are not there as items."""
    run = _find_run(text, _phrase_items(words))
    if run is None:
        return PromptEdit(text)
    new_text, position = _cut(text, *run)
    return PromptEdit(new_text, (position, position), True)


# ----------------------------------------------------------------------------------------------------- tag writing


def _tag_name(raw: RawTag) -> str | None:
    positional = raw.positional
    return positional[0].text if positional and positional[0].text else None


def _counting(tags: list[LoraTag]) -> LoraTag:
    for tag in reversed(tags):
        if tag.counts:
            return tag
    return tags[-1]


def _wanted(target: StackEntry | str, current: StackEntry | None, changes: Mapping[str, object]) -> StackEntry:
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise TypeError(f"unknown LoRA tag field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    if isinstance(target, StackEntry):
        base = target
    else:
        base = current if current is not None else StackEntry(target)
    wanted = replace(base, **changes)  # type: ignore[arg-type]
    _check_values(wanted)
    return replace(
        wanted,
        te=float(wanted.te),
        unet=float(wanted.unet),
        x=None if wanted.x is None else float(wanted.x),
    )


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"LoRA name {name!r}: a tag needs a non-empty name")
    if ":" in name or ">" in name:
        raise ValueError(f"LoRA name {name!r}: a tag cannot hold ':' or '>' in a name (the WebUI's limit)")
    if name.count("=") == 1:
        raise ValueError(f"LoRA name {name!r}: a name with exactly one '=' would be read as a named argument")


def _check_values(entry: StackEntry) -> None:
    for key in ("te", "unet", "x"):
        value = getattr(entry, key)
        if value is None and key == "x":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{entry.name}: {key}={value!r} is not a finite number")
    for key, minimum in (("dyn", 1), ("start", 0), ("stop", 0)):
        value = getattr(entry, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{entry.name}: {key}={value!r} must be a whole number ≥ {minimum}")
    for key in ("lbw", "lbwe"):
        value = getattr(entry, key)
        if value is None:
            continue
        if not isinstance(value, str) or any(c in value for c in ":>="):
            raise ValueError(f"{entry.name}: {key}={value!r} must be text without ':', '>' or '='")
        if key == "lbw" and is_vector(value):
            fault = vector_fault(value)
            if fault:
                raise ValueError(f"{entry.name}: lbw={value!r}: {fault}")


def _named_value(entry: StackEntry, key: str) -> str | None:
    value = getattr(entry, key)
    if value is None:
        return None
    return format_number(value) if key == "x" else str(value)


def _rewritten(raw: RawTag, wanted: StackEntry) -> str:
    """The tag ``raw`` holding ``wanted``: same kind and name text, unmanaged arguments kept in place."""
    name_text = raw.positional[0].text
    parts = [name_text, format_number(wanted.te)]
    if wanted.unet != wanted.te:
        parts.append(format_number(wanted.unet))
    last: dict[str, int] = {}
    for i, arg in enumerate(raw.args):
        kv = arg.named
        if kv is not None:
            last[kv[0]] = i
    # Each named field is written where the argument that decided its value stood (the parser's precedence).
    place = {key: last[key] for key in ("dyn", "lbwe", "x", "start", "stop") if key in last}
    if "lbw" in last or "w" in last:
        place["lbw"] = last.get("lbw", last.get("w", 0))
    if "step" in last:
        place["start"] = place["stop"] = last["step"]
    fields_at: dict[int, list[str]] = {}
    for key in _NAMED_FIELDS:
        if key in place:
            fields_at.setdefault(place[key], []).append(key)
    written: set[str] = set()
    for i, arg in enumerate(raw.args):
        kv = arg.named
        if kv is None:
            continue  # positional values are all ours (name, strengths, dyn, legacy preset); the name is first
        if kv[0] not in KNOWN_NAMED:
            parts.append(arg.text)
            continue
        for key in fields_at.get(i, ()):
            value = _named_value(wanted, key)
            if value is not None:
                parts.append(f"{key}={value}")
            written.add(key)
    for key in _NAMED_FIELDS:
        value = _named_value(wanted, key)
        if key not in written and value is not None:
            parts.append(f"{key}={value}")
    tag = f"<{raw.kind}:{':'.join(parts)}>"
    return _verified(tag, wanted)


def _verified(tag: str, wanted: StackEntry) -> str:
    entries = parse_prompt(tag).entries
    if len(entries) != 1 or entries[0] != wanted:  # a guard: _check_values should make this unreachable
        raise ValueError(f"{wanted.name}: these values cannot be written as a tag ({tag!r})")
    return tag


# ------------------------------------------------------------------------------------------------ text surgery


def _append(text: str, piece: str, separator: str) -> tuple[str, tuple[int, int]]:
    """Insert ``piece`` after the last item, before the trailing separators (which stay after it)."""
    cut = _TRAILING_SEPARATORS.search(text)
    core_end = cut.start() if cut else len(text)
    joiner = separator if core_end else ""
    start = core_end + len(joiner)
    return text[:core_end] + joiner + piece + text[core_end:], (start, start + len(piece))


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _cut(text: str, start: int, end: int) -> tuple[str, int]:
    """Remove ``text[start:end]`` and the separator that would be left dangling; returns the text and the cursor.

    Spaces next to the cut (not line ends) and one comma are all that may go: at the end of a line or group (before a line
    end, ``)``, ``]``, ``}``, ``|``, ``BREAK`` or the end) the separator before it; at the start of one, the
    separator after it; between two items, one of the two (``a, X, b`` → ``a, b``; ``a X b`` → ``a b``)."""
    left, right = text[:start], text[end:]
    left_space = _SPACE_AT_END.search(left).group()  # type: ignore[union-attr]
    left_core = left[: len(left) - len(left_space)]
    right_space = _SPACE_AT_START.match(right).group()  # type: ignore[union-attr]
    right_core = right[len(right_space) :]
    at_group_end = not right_core or right_core[0] in _CLOSERS or _BREAK_AT_START.match(right_core) is not None
    at_group_start = not left_core or left_core[-1] in _OPENERS or _BREAK_AT_END.search(left_core) is not None
    if at_group_end:
        if left_core.endswith(","):
            left_core = _SPACE_AT_END.sub("", left_core[:-1])
        middle = right_space
        if not middle and left_core and _is_word(left_core[-1]) and _BREAK_AT_START.match(right_core):
            middle = left_space or " "
    elif at_group_start:
        if right_core.startswith(","):
            right_core = _SPACE_AT_START.sub("", right_core[1:])
        middle = left_space
        if not middle and right_core and _is_word(right_core[0]) and _BREAK_AT_END.search(left_core):
            middle = right_space or " "
    elif right_core.startswith(","):
        if left_core.endswith(","):
            left_core = _SPACE_AT_END.sub("", left_core[:-1])
        middle = right_space  # the comma that stays keeps the spacing before it
    else:
        middle = left_space or right_space
    joined = left_core + middle + right_core
    # Two halves must not fuse into a new tag (``<lora`` + ``:y>``): a space keeps them apart.
    junction = len(left_core)
    if any(m.start() < junction < m.end() or m.start() < junction + len(middle) < m.end() for m in TAG_RE.finditer(joined)):
        joined = left_core + " " + middle + right_core
    return joined, junction


def _items(text: str) -> list[tuple[int, int]]:
    """Spans of the items of ``text`` (the stripped stretches between boundaries), in order."""
    spans: list[tuple[int, int]] = []
    position = 0
    for m in [*_ITEM_BOUNDARY.finditer(text), None]:
        stop = m.start() if m else len(text)
        piece = text[position:stop]
        stripped = piece.strip()
        if stripped:
            first = position + len(piece) - len(piece.lstrip())
            spans.append((first, first + len(stripped)))
        if m:
            position = m.end()
    return spans


def _phrase_items(words: str) -> list[str]:
    return [item.strip() for item in _ITEM_BOUNDARY.split(words) if item.strip()]


def _find_run(text: str, items: list[str]) -> tuple[int, int] | None:
    """The span of the last run of consecutive items equal to ``items``, joined by single commas."""
    if not items:
        return None
    spans = _items(text)
    for first in range(len(spans) - len(items), -1, -1):
        run = spans[first : first + len(items)]
        if any(text[s:e] != item for (s, e), item in zip(run, items)):
            continue
        if all(_ONE_COMMA.fullmatch(text[a[1] : b[0]]) for a, b in pairwise(run)):
            return run[0][0], run[-1][1]
    return None


__all__ = [
    "FIELDS",
    "LoraTag",
    "PromptEdit",
    "add_lora_tag",
    "add_words",
    "find_lora_tags",
    "has_words",
    "remove_lora_tags",
    "remove_words",
    "set_lora_tag",
]
