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
    named = (
        ("dyn", entry.dyn, str),
        ("lbw", entry.lbw, str),
        ("lbwe", entry.lbwe, str),
        ("x", entry.x, format_number),
        ("start", entry.start, str),
        ("stop", entry.stop, str),
    )
    parts += [f"{key}={fmt(value)}" for key, value, fmt in named if value is not None]
    return f"<lora:{':'.join(parts)}>"


def format_request(request: StackRequest, separator: str = " ") -> str:
    return separator.join(format_entry(e) for e in request.entries)
