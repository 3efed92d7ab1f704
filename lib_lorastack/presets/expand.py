"""``<lorastack:NAME>`` and ``<lorastack:NAME:SCALE>`` in a prompt → the preset's ``<lora:…>`` tags.

Each strength is multiplied by the tag's scale and the preset's own scale; block presets from the store are
written out as vectors, so the expanded prompt (which is what gets recorded) reproduces the image without the
preset. A tag that cannot be expanded is removed with an error diagnostic; a missing LoRA is left out with a
warning and the rest of the preset still applies.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..syntax.format import format_entry
from ..syntax.lbw import DEFAULT_PRESETS
from ..syntax.request import Diagnostic, StackEntry
from .model import Preset, PresetDocument
from .store import suggest
from .validate import MAX_NUMBER, name_fault

if TYPE_CHECKING:
    from .resolve import LoraResolver

PRESET_TAG_RE = re.compile(r"<lorastack:([^>]*)>")


@dataclass(frozen=True)
class PresetExpansion:
    """One preset as LoRA tags. ``entries``: what goes into the prompt (scaled, under names the WebUI finds)."""

    preset: str
    entries: tuple[StackEntry, ...]
    tags: str
    triggers: str
    negative_triggers: str
    diagnostics: tuple[Diagnostic, ...]


@dataclass(frozen=True)
class ExpandedPrompt:
    """The prompts with every preset tag replaced, the LoRAs they brought (in order), and what went wrong."""

    prompt: str
    negative: str
    entries: tuple[StackEntry, ...]
    presets: tuple[str, ...]
    diagnostics: tuple[Diagnostic, ...]

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")


def _tidy(value: float) -> float:
    """0.7 × 1.1 is 0.7700000000000001 in binary; write 0.77 (10 significant digits are kept)."""
    return float(f"{value:.10g}")


def expand_preset(
    preset: Preset,
    *,
    scale: float = 1.0,
    resolver: LoraResolver | None = None,
    family: str | None = None,
    block_presets: Mapping[str, str] | None = None,
    span: tuple[int, int] = (0, 0),
) -> PresetExpansion:
    """``preset`` at ``scale`` as ``<lora:…>`` tags. With a ``resolver`` every row is found by hash, file name or
    alias and written under a name that reaches that file; without one, under the name it was saved with."""
    diags: list[Diagnostic] = []
    family = getattr(family, "value", family)
    if family and preset.family and family != preset.family:
        diags.append(
            Diagnostic(
                "preset-family", "warning",
                f"preset {preset.name!r} was made for {preset.family}, the model is {family}; its LoRAs may not fit",
                span,
            )
        )
    factor = scale * preset.scale
    table = block_presets or {}
    entries: list[StackEntry] = []
    for row in preset.entries:
        if not row.enabled:
            continue
        name = row.name
        if resolver is not None:
            res = resolver.resolve(row, preset.name)
            if res.message:
                kind = "preset-lora-missing" if res.found is None else f"preset-lora-by-{res.how}"
                diags.append(Diagnostic(kind, "warning" if res.severity == "warning" else "info", res.message, span))
            if res.tag_name is None:
                continue
            name = res.tag_name
        lbw = row.lbw
        if lbw is not None and "," not in lbw:
            if lbw in table:
                lbw = table[lbw]  # written out: the recorded prompt must not depend on this store
            elif lbw not in DEFAULT_PRESETS:
                diags.append(
                    Diagnostic(
                        "preset-block-preset", "warning",
                        f"preset {preset.name!r}: {row.label} uses block preset {lbw!r}, which is not in the store "
                        "(import your lbwpresets.txt); every block applies at 1",
                        span,
                    )
                )
        entry = row.to_stack_entry(name, lbw=lbw)
        entries.append(replace(entry, te=_tidy(entry.te * factor), unet=_tidy(entry.unet * factor)))
    tags = " ".join(format_entry(e) for e in entries)
    return PresetExpansion(preset.name, tuple(entries), tags, preset.triggers, preset.negative_triggers, tuple(diags))


def _parse_tag(inner: str) -> tuple[str, float, str | None]:
    """``NAME`` or ``NAME:SCALE`` → (name, scale, fault)."""
    parts = inner.split(":")
    name = parts[0]
    fault = name_fault(name, what="preset name")
    if fault:
        return name, 1.0, fault
    if len(parts) > 2:
        return name, 1.0, f"<lorastack:{inner}> has {len(parts) - 1} values after the name; write <lorastack:NAME:SCALE>"
    if len(parts) == 1:
        return name, 1.0, None
    text = parts[1].strip()
    try:
        value = float(text)
    except ValueError:
        return name, 1.0, f"preset {name!r}: scale {text!r} is not a number"
    if not math.isfinite(value) or abs(value) > MAX_NUMBER:
        return name, 1.0, f"preset {name!r}: scale {text!r} is not a finite number within ±{MAX_NUMBER:g}"
    return name, value, None


def _join(text: str, extra: str, sep: str = ", ") -> str:
    if not extra:
        return text
    if not text.strip():
        return extra
    return text.rstrip().rstrip(",") + sep + extra


def expand_prompt(
    prompt: str,
    negative: str = "",
    *,
    presets: PresetDocument | Mapping[str, Preset],
    add_triggers: bool = False,
    resolver: LoraResolver | None = None,
    family: str | None = None,
    block_presets: Mapping[str, str] | None = None,
) -> ExpandedPrompt:
    """Replace every ``<lorastack:…>`` tag of ``prompt``. With ``add_triggers`` the preset's trigger words follow
    its tags and its negative trigger words are appended to ``negative`` (once per preset). Never raises on user
    text. ``presets`` may be a store's document (its block presets are used) or a name → ``Preset`` mapping."""
    if isinstance(presets, PresetDocument):
        table = presets.presets
        block_presets = {**presets.block_presets, **(block_presets or {})}
    else:
        table = presets
    diags: list[Diagnostic] = []
    entries: list[StackEntry] = []
    used: list[str] = []
    negatives: list[str] = []
    pieces: list[str] = []
    last = 0
    for m in PRESET_TAG_RE.finditer(prompt):
        pieces.append(prompt[last : m.start()])
        last = m.end()
        span = (m.start(), m.end())
        name, scale, fault = _parse_tag(m.group(1))
        if fault:
            diags.append(Diagnostic("preset-bad-tag", "error", f"{fault}; this tag is left out", span))
            continue
        preset = table.get(name)
        if preset is None:
            close = suggest(name, table)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            diags.append(Diagnostic("preset-not-found", "error", f"no preset named {name!r}{hint}; this tag is left out", span))
            continue
        ex = expand_preset(preset, scale=scale, resolver=resolver, family=family, block_presets=block_presets, span=span)
        diags += ex.diagnostics
        entries += ex.entries
        text = ex.tags
        first_use = name not in used
        if add_triggers and first_use:
            text = " ".join(t for t in (text, ex.triggers) if t)
            if ex.negative_triggers:
                negatives.append(ex.negative_triggers)
        if first_use:
            used.append(name)
        pieces.append(text)
    pieces.append(prompt[last:])
    new_negative = negative
    for m in list(PRESET_TAG_RE.finditer(negative))[::-1]:
        diags.append(
            Diagnostic(
                "negative-prompt", "warning",
                "preset tags in the negative prompt are not expanded (LoRAs apply from the positive prompt); removed",
                (m.start(), m.end()), source="negative",
            )
        )
        new_negative = new_negative[: m.start()] + new_negative[m.end() :]
    for extra in negatives:
        new_negative = _join(new_negative, extra)
    return ExpandedPrompt("".join(pieces), new_negative, tuple(entries), tuple(used), tuple(diags))


def has_preset_tags(prompt: str) -> bool:
    return PRESET_TAG_RE.search(prompt) is not None
