"""``StackRequest`` → canonical tag text. ``parse_prompt(format_request(r)) == r``."""

from __future__ import annotations

from .request import StackEntry, StackRequest


def format_number(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def format_entry(entry: StackEntry) -> str:
    parts = [entry.name, format_number(entry.te)]
    if entry.unet != entry.te:
        parts.append(format_number(entry.unet))
    if entry.dyn is not None:
        parts.append(f"dyn={entry.dyn}")
    if entry.lbw is not None:
        parts.append(f"lbw={entry.lbw}")
    if entry.lbwe is not None:
        parts.append(f"lbwe={entry.lbwe}")
    if entry.x is not None:
        parts.append(f"x={format_number(entry.x)}")
    if entry.start is not None:
        parts.append(f"start={entry.start}")
    if entry.stop is not None:
        parts.append(f"stop={entry.stop}")
    return f"<lora:{':'.join(parts)}>"


def format_request(request: StackRequest, separator: str = " ") -> str:
    return separator.join(format_entry(e) for e in request.entries)
