"""Prompt text → ``StackRequest``. Never raises on user text: every fault becomes a diagnostic with its span.

Argument rules (the WebUI's ``extra_networks_lora.py``, then lora-block-weight's keys):
* ``<lora:NAME>`` te = unet = 1; ``<lora:NAME:W>`` te = unet = W; ``<lora:NAME:TE:UNET>``; ``<lora:NAME:TE:UNET:DYN>``.
* Named ``te=`` overrides the positional TE; the UNet default is the TE value *after* that override, so
  ``<lora:x:0.5:te=1>`` is te = 1, unet = 1. Named ``unet=`` and ``dyn=`` override their positions.
* ``lbw=`` (alias ``w=``), ``lbwe=``, ``x=``, ``start=``, ``stop=``, ``step=A-B`` as lora-block-weight.
* Legacy ``<lora:NAME:W:PRESET>``: a preset name or block vector in the UNet place is taken as ``lbw=``
  (warning); a number after it is ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..schedule import never_active
from .lbw import DEFAULT_PRESETS, is_vector, spec_fault
from .request import Diagnostic, StackEntry, StackRequest
from .tags import LORA_TAGS, Arg, RawTag, find_tags, strip_tags

KNOWN_NAMED = {"te", "unet", "dyn", "lbw", "w", "lbwe", "x", "start", "stop", "step"}


class _TagError(Exception):
    def __init__(self, kind: str, message: str, span: tuple[int, int]) -> None:
        super().__init__(message)
        self.kind, self.message, self.span = kind, message, span


def _number(arg: Arg, what: str) -> float:
    text = arg.text
    value_text = text.split("=", 1)[1] if arg.named else text
    if "@" in value_text:
        raise _TagError("unsupported-syntax", f"{what} {value_text!r}: loractl-style schedules are not supported", arg.span)
    try:
        value = float(value_text)
    except ValueError:
        raise _TagError("bad-number", f"{what} {value_text!r} is not a number", arg.span) from None
    if not math.isfinite(value):
        raise _TagError("bad-number", f"{what} {value_text!r} is not a finite number", arg.span)
    return value


def _integer(arg: Arg, what: str, *, minimum: int = 0) -> int:
    value_text = arg.text.split("=", 1)[1] if arg.named else arg.text
    try:
        value = int(value_text)
    except ValueError:
        raise _TagError("bad-number", f"{what} {value_text!r} is not a whole number", arg.span) from None
    if value < minimum:
        raise _TagError("bad-number", f"{what} {value} is below {minimum}", arg.span)
    return value


def _value(arg: Arg) -> str:
    return arg.text.split("=", 1)[1]


def _entry(tag: RawTag, presets: Mapping[str, str], diags: list[Diagnostic]) -> StackEntry:
    positional, named = tag.positional, tag.named()
    if not positional or not positional[0].text:
        raise _TagError("no-name", f"<{tag.kind}:…> has no LoRA name", tag.span)
    name = positional[0].text
    for key, arg in named.items():
        if key not in KNOWN_NAMED:
            diags.append(Diagnostic("unknown-argument", "warning", f"{name}: unknown argument {key!r} ignored", arg.span))

    lbw: str | None = None
    x: float | None = None
    te = _number(positional[1], "TE strength") if len(positional) > 1 else 1.0
    if "te" in named:
        te = _number(named["te"], "te=")
    unet = te
    rest = positional[3:]
    if len(positional) > 2:
        third = positional[2]
        try:
            unet = _number(third, "UNet strength")
        except _TagError as err:
            if err.kind == "bad-number" and (third.text in presets or is_vector(third.text)):
                lbw = third.text
                diags.append(
                    Diagnostic(
                        "legacy-preset",
                        "warning",
                        f"{name}: block weights in the UNet place are the old lora-block-weight form; "
                        f"read as lbw={third.text} (write <lora:{name}:{positional[1].text}:lbw={third.text}>)",
                        third.span,
                    )
                )
                if rest:
                    x = _number(rest[0], "X value")
                    rest = rest[1:]
            else:
                raise
    if "unet" in named:
        unet = _number(named["unet"], "unet=")
    # A named dyn= overrides the positional one before anything is checked (as the WebUI reads it): only the
    # final value must be a whole number ≥ 1.
    if "dyn" in named:
        dyn = _integer(named["dyn"], "dyn=", minimum=1)
    else:
        dyn = _integer(rest[0], "dyn", minimum=1) if rest and lbw is None else None
    if rest and lbw is None and len(rest) > 1:
        diags.append(Diagnostic("unknown-argument", "warning", f"{name}: extra values after dyn ignored", rest[1].span))

    spec_arg = named.get("lbw", named.get("w"))
    if spec_arg is not None:
        lbw = _value(spec_arg)
    if lbw is not None:
        fault = spec_fault(lbw, presets)
        if fault:
            where = spec_arg.span if spec_arg is not None else positional[2].span
            if is_vector(lbw):
                raise _TagError("bad-vector", f"{name}: {fault}", where)
            diags.append(Diagnostic("unknown-preset", "warning", f"{name}: {fault}; every block applies at 1", where))
    lbwe = _value(named["lbwe"]) if "lbwe" in named else None
    if "x" in named:
        x = _number(named["x"], "x=")

    start = _integer(named["start"], "start=") if "start" in named else None
    stop = _integer(named["stop"], "stop=") if "stop" in named else None
    if "step" in named:
        text = _value(named["step"])
        a, dash, b = text.partition("-")
        if not dash:
            raise _TagError("bad-schedule", f"{name}: step={text!r} must be FROM-TO, e.g. step=5-20", named["step"].span)
        start = _integer(Arg(a, named["step"].span), "step start")
        stop = _integer(Arg(b, named["step"].span), "step end")
    if never_active(start, stop):
        first = max(start or 1, 1)
        diags.append(
            Diagnostic("bad-schedule", "warning", f"{name}: stop {stop} ≤ start {first} (steps count from 1): never active", tag.span)
        )
    return StackEntry(name, te, unet, dyn, lbw, lbwe, x, start, stop, span=tag.span, tag=tag.kind)


def parse_prompt(prompt: str, negative: str = "", *, presets: Mapping[str, str] | None = None) -> StackRequest:
    """Every ``<lora:…>``/``<lyco:…>`` tag of the positive prompt, in the WebUI's stack order (``webui_order``), and
    every problem found."""
    table = {**DEFAULT_PRESETS, **(presets or {})}
    diags: list[Diagnostic] = []
    entries: list[StackEntry] = []
    for tag in webui_order(find_tags(prompt)):
        if tag.kind not in LORA_TAGS:
            continue
        try:
            entries.append(_entry(tag, table, diags))
        except _TagError as err:
            diags.append(Diagnostic(err.kind, "error", f"{err.message}; this tag is ignored", err.span))
    entries = _dedupe(entries, diags)
    for tag in find_tags(negative):
        if tag.kind in LORA_TAGS:
            diags.append(
                Diagnostic(
                    "negative-prompt",
                    "warning",
                    "LoRA tags in the negative prompt are not applied (as in the WebUI); the text stays in the prompt",
                    tag.span,
                    source="negative",
                )
            )
    return StackRequest(tuple(entries), tuple(diags), strip_tags(prompt))


def webui_order(tags: list[RawTag]) -> list[RawTag]:
    """The order in which the WebUI hands tags to their handler: grouped by tag kind, the kinds in the order of
    their first appearance, text order within a kind (``<lora:a> <lyco:b> <lora:c>`` is a, c, b)."""
    kinds: dict[str, int] = {}
    for tag in tags:
        kinds.setdefault(tag.kind, len(kinds))
    return sorted(tags, key=lambda t: kinds[t.kind])


def _dedupe(entries: list[StackEntry], diags: list[Diagnostic]) -> list[StackEntry]:
    """The same LoRA twice: the later tag wins, once (the WebUI would apply it twice at the later weight)."""
    last = {e.name: i for i, e in enumerate(entries)}
    kept = []
    for i, e in enumerate(entries):
        if last[e.name] != i:
            later = entries[last[e.name]]
            diags.append(
                Diagnostic(
                    "duplicate",
                    "warning",
                    f"{e.name} appears more than once; the later tag ({later.te:g}/{later.unet:g}) is used, once",
                    e.span or (0, 0),
                )
            )
        else:
            kept.append(e)
    return kept
