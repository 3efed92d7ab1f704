"""The infotext fields LoRA Stack writes and reads back.

* ``Lora hashes: "name: hash, …"``: exactly as the WebUI's built-in writes it (names without ``:`` and ``,``), so
  images made here and with the built-in paste the same way.
* ``LoRA stack: "name@hash:te[:unet][:lbw=v1,…][:start=…]…; …"``: what was resolved and applied, one canonical tag
  body per LoRA with the file's short hash after the name, block weights as the resolved vector (so the image can
  be reproduced without the presets that named them).
* ``LoRA stack errors``: every problem of the job, one line.

Schedules: ``start=``/``stop=`` count steps from 1 (lora-block-weight's rule). Versions before that counted from 0;
a ``LoRA stack`` field with a schedule now begins with the part ``@steps=1``. A pasted field that has a schedule but
not that mark was written under the old count: its values, and those in the pasted prompts, are moved up by one so
that the image pastes to the same behaviour (``legacy_schedules``, ``shift_schedules``).

Pasted infotext is untrusted (images from the internet carry it): fields are bounded in size, hashes must be hex,
names resolve only through the LoRA index (never as paths), and the empty content's hash identifies nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..syntax import StackEntry, format_entry, parse_prompt
from ..syntax.tags import LORA_TAGS, find_tags

LORA_HASHES = "Lora hashes"
STACK_FIELD = "LoRA stack"
STACK_ERRORS = "LoRA stack errors"
EMPTY_SHORT_HASH = "e3b0c44298fc"  # sha256 of nothing: an empty or header-only file, never an identity
MAX_FIELD_CHARS = 16384
MAX_ERRORS_CHARS = 2000
_HEX = re.compile(r"^[0-9a-fA-F]{10,64}$")
_TAG_NAME = re.compile(r"<(lora|lyco):([^:>]+)")
_NO_SYMBOLS = str.maketrans("", "", ":,")
SCHEDULE_MARK = "@steps=1"  # the field's schedules count steps from 1
_SCHEDULE_KEYS = ("start", "stop", "step")


def hash_key(value: str) -> str:
    """The 12 hex digits the WebUI shows (``Lora hashes``, ``available_network_hash_lookup``)."""
    return value[:12].lower()


def usable_hash(value: str | None) -> bool:
    return bool(value) and bool(_HEX.match(value)) and hash_key(value) != EMPTY_SHORT_HASH  # type: ignore[arg-type]


def lora_hashes_value(pairs: Sequence[tuple[str, str]]) -> str:
    """``[(name as typed, short hash), …]`` → the WebUI's ``Lora hashes`` value (a repeated name keeps its place
    and takes the later hash, as the built-in's dict does)."""
    table: dict[str, str] = {}
    for name, short in pairs:
        if short:
            table[name.translate(_NO_SYMBOLS)] = short
    return ", ".join(f"{k}: {v}" for k, v in table.items())


def parse_lora_hashes(text: str) -> tuple[dict[str, str], list[str]]:
    """``Lora hashes`` → ``{name: hash}``; malformed or oversized parts are left out, each with a message."""
    if not isinstance(text, str):
        return {}, [f"{LORA_HASHES}: not text, ignored"]
    if len(text) > MAX_FIELD_CHARS:
        return {}, [f"{LORA_HASHES}: {len(text)} characters (more than {MAX_FIELD_CHARS}), ignored"]
    out: dict[str, str] = {}
    problems: list[str] = []
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not name or not _HEX.match(value):
            problems.append(f"{LORA_HASHES}: {part.strip()[:60]!r} is not 'name: hex hash', ignored")
            continue
        out[name] = value.lower()
    return out, problems


@dataclass(frozen=True)
class StackRecord:
    """One LoRA of a ``LoRA stack`` field."""

    entry: StackEntry  # name = the name as it was typed
    short_hash: str | None


def _escape(name: str) -> str:
    return name.replace("%", "%25").replace(";", "%3B").replace("@", "%40")


def _unescape(name: str) -> str:
    return name.replace("%40", "@").replace("%3B", ";").replace("%25", "%")


def stack_value(records: Sequence[StackRecord]) -> str:
    parts = [SCHEDULE_MARK] if any(r.entry.start is not None or r.entry.stop is not None for r in records) else []
    for r in records:
        body = format_entry(r.entry)[len("<lora:") : -1]
        _, _, args = body.partition(":")
        parts.append(f"{_escape(r.entry.name)}@{r.short_hash or '-'}:{args}")
    return "; ".join(parts)


def parse_stack_value(text: str) -> tuple[list[StackRecord], list[str]]:
    """``LoRA stack`` → records; a part that does not parse is left out with a message."""
    if not isinstance(text, str):
        return [], [f"{STACK_FIELD}: not text, ignored"]
    if len(text) > MAX_FIELD_CHARS:
        return [], [f"{STACK_FIELD}: {len(text)} characters (more than {MAX_FIELD_CHARS}), ignored"]
    records: list[StackRecord] = []
    problems: list[str] = []
    legacy = legacy_schedules(text)
    for part in text.split(";"):
        part = part.strip()
        if not part or part == SCHEDULE_MARK:
            continue
        if legacy:
            part = shift_schedules(f"<lora:{part}>")[len("<lora:") : -1]
        head, _, args = part.partition(":")
        name, at, short = head.rpartition("@")
        if not at or not name or not (short == "-" or _HEX.match(short)) or ">" in part or "<" in part:
            problems.append(f"{STACK_FIELD}: {part[:60]!r} is not 'name@hash:strengths…', ignored")
            continue
        request = parse_prompt(f"<lora:{_unescape(name)}:{args}>" if args else f"<lora:{_unescape(name)}>")
        if len(request.entries) != 1 or request.errors:
            fault = request.errors[0].message if request.errors else "no LoRA"
            problems.append(f"{STACK_FIELD}: {part[:60]!r}: {fault}, ignored")
            continue
        records.append(StackRecord(request.entries[0], None if short == "-" else short.lower()))
    return records, problems


def legacy_schedules(field: object) -> bool:
    """A ``LoRA stack`` value written when schedules counted from 0: it has ``start=``/``stop=``/``step=`` but not
    the mark of the count from 1."""
    if not isinstance(field, str) or len(field) > MAX_FIELD_CHARS:
        return False
    parts = [p.strip() for p in field.split(";")]
    if SCHEDULE_MARK in parts:
        return False
    return any(a.named is not None and a.named[0] in _SCHEDULE_KEYS for t in find_tags("".join(f"<lora:{p}>" for p in parts)) for a in t.args)


def shift_schedules(prompt: str, by: int = 1) -> str:
    """Every ``start=N``/``stop=N``/``step=A-B`` of the prompt's ``<lora:…>``/``<lyco:…>`` tags moved by ``by`` steps
    (values that are not whole numbers stay as they are: the job will name them)."""

    def moved(value: str) -> str:
        try:
            return str(max(int(value) + by, 0))
        except ValueError:
            return value

    edits: list[tuple[tuple[int, int], str]] = []
    for tag in find_tags(prompt):
        if tag.kind not in LORA_TAGS:
            continue
        for arg in tag.args:
            kv = arg.named
            if kv is None or kv[0] not in _SCHEDULE_KEYS:
                continue
            key, value = kv
            if key == "step":
                a, dash, b = value.partition("-")
                new = f"{moved(a)}-{moved(b)}" if dash else value
            else:
                new = moved(value)
            if new != value:
                edits.append((arg.span, f"{key}={new}"))
    for (a, b), text in sorted(edits, reverse=True):
        prompt = prompt[:a] + text + prompt[b:]
    return prompt


def errors_value(messages: Sequence[str]) -> str:
    text = "; ".join(" ".join(m.split()) for m in messages)
    return text if len(text) <= MAX_ERRORS_CHARS else text[: MAX_ERRORS_CHARS - 1] + "…"


def repair_pasted_prompt(prompt: str, hashes: Mapping[str, str], local_name: Callable[[str], str | None]) -> tuple[str, list[str]]:
    """Rename each ``<lora:NAME`` / ``<lyco:NAME`` whose NAME has a hash in ``hashes`` to the name of the local file
    with that hash (``local_name(short hash)``, which looks only inside the LoRA index). Names without a usable
    hash, or whose hash no local file has, stay as they are; the messages say which."""
    messages: list[str] = []

    def rename(m: re.Match) -> str:
        kind, name = m.group(1), m.group(2)
        value = hashes.get(name.translate(_NO_SYMBOLS)) or hashes.get(name)
        if value is None:
            return m.group(0)
        if not usable_hash(value):
            messages.append(f"{name}: the pasted hash {value[:12]} is the empty file's hash; the name is kept")
            return m.group(0)
        local = local_name(hash_key(value))
        if local is None:
            messages.append(f"{name}: no LoRA here has the hash {hash_key(value)}; the name is kept")
            return m.group(0)
        return f"<{kind}:{local}"

    return _TAG_NAME.sub(rename, prompt), messages
