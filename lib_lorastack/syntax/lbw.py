"""lora-block-weight (LBW) compatible block weights: presets, preset files, vectors, elemental rules.

Resolution follows LBW's ``loradealer``/``to26``/``ratiodealer``: a spec is a vector when it has 12, 17, 20,
26 or 61 values, else a preset name; vector items are numbers, ``R`` (random in [0, 1), 3 decimals), ``U``
(random in [-0.5, 1.5), 3 decimals) or ``X``/``X+d``/``X-d`` (the ``x=`` value, default 1). Short vectors are
placed into the 26 slots by their layout and **every slot they do not name is 0** (LBW's ``to26``). Modules
outside every block keep weight 1. A module's weight multiplies the LoRA's TE strength (BASE) or UNet strength.

Flux LoRAs use LBW's 61-slot layout (CLIP, T5, IN, D00–D18, S00–S37, OUT) and only it: LBW's own presets other
than FLUXALL are 17 long, and LBW fails on Flux with any vector that is not 61 long (``to26`` makes it 26 and the
Flux lookup indexes past its end). Such a spec on a Flux LoRA is refused with a note (every block at 1) instead.
CLIP and T5 weights multiply the TE strength, the others the UNet (transformer) strength, as in LBW's Forge path.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..formats.targets import Family
from .blocks import (
    BLOCK_IDS_26,
    BLOCK_IDS_FLUX,
    FLUX_LENGTH,
    FULL_LAYOUT,
    LAYOUTS,
    VECTOR_LENGTHS,
    flux_block_id,
    flux_patch_key,
    is_flux_module,
    layer_name,
    slot_of,
    slot_space,
)

DEFAULT_PRESETS: dict[str, str] = {
    "NONE": ",".join(["0"] * 17),
    "ALL": ",".join(["1"] * 17),
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": ",".join(["0.5"] * 17),
    "FLUXALL": ",".join(["1"] * FLUX_LENGTH),
}
DEFAULT_ELEMENTAL: dict[str, str] = {
    "ATTNDEEPON": "IN05-OUT05:attn:1",
    "ATTNDEEPOFF": "IN05-OUT05:attn:0",
    "PROJDEEPOFF": "IN05-OUT05:proj:0",
}

_X_RE = re.compile(r"X([+-])?([\d.]+)?")


@dataclass(frozen=True)
class PresetFileProblem:
    line: int
    text: str
    reason: str


def read_presets(text: str) -> tuple[dict[str, str], list[PresetFileProblem]]:
    """Read LBW's ``lbwpresets.txt`` (``NAME:v1,…,vn`` per line). LBW drops a line silently when it has no ``:``,
    contains ``#`` anywhere or has a value count other than 12/17/20/26/61; we drop the same lines and say why."""
    presets: dict[str, str] = {}
    problems: list[PresetFileProblem] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if "#" in line:
            if not line.lstrip().startswith("#"):
                problems.append(PresetFileProblem(number, line, "contains '#' (LBW ignores such lines)"))
            continue
        if ":" not in line:
            problems.append(PresetFileProblem(number, line, "no ':' between name and values"))
            continue
        name, values = line.split(":", 1)
        count = values.count(",") + 1
        if count not in VECTOR_LENGTHS:
            problems.append(PresetFileProblem(number, line, f"{count} values; a preset needs 12, 17, 20, 26 or 61"))
            continue
        fault = vector_fault(values)
        if fault:
            problems.append(PresetFileProblem(number, line, fault))
            continue
        presets[name.strip()] = values
    return presets, problems


def read_elemental(text: str) -> dict[str, str]:
    """LBW's ``elempresets.txt``: entries separated by a blank line, each ``NAME:BLOCKS:ELEMENTS:RATIO`` with more
    ``BLOCKS:ELEMENTS:RATIO`` directives after ``,`` or a newline."""
    out: dict[str, str] = {}
    for entry in text.split("\n\n"):
        if ":" in entry:
            name, rules = entry.split(":", 1)
            out[name.strip()] = rules
    return out


def vector_fault(spec: str) -> str | None:
    """Why a comma vector cannot be used (None when it can)."""
    for i, item in enumerate(spec.split(",")):
        value = item.strip()
        if value in ("R", "U") or (value.startswith("X") and _X_RE.fullmatch(value)):
            continue
        try:
            number = float(value)
        except ValueError:
            return f"value {i + 1} ({value!r}) is not a number, R, U or X"
        if number != number or number in (float("inf"), float("-inf")):
            return f"value {i + 1} ({value!r}) is not finite"
    return None


def is_vector(spec: str) -> bool:
    return spec.count(",") + 1 in VECTOR_LENGTHS


def spec_fault(spec: str, presets: Mapping[str, str]) -> str | None:
    """None when ``spec`` is a known preset or a usable vector, else what is wrong."""
    if spec in presets:
        return None
    if is_vector(spec):
        return vector_fault(spec)
    if "," in spec:
        n = spec.count(",") + 1
        return f"block vector has {n} values; LBW vectors have 12, 17, 20 or 26 (61 for Flux)"
    return f"unknown block-weight preset {spec!r}"


def _value(item: str, x: float, rng: random.Random) -> float:
    item = item.strip()
    if item == "R":
        return round(rng.random(), 3)
    if item == "U":
        return round(rng.uniform(-0.5, 1.5), 3)
    if item.startswith("X"):
        m = _X_RE.search(item)
        if m and m.group(1) == "+":
            return x + float(m.group(2))
        if m and m.group(1) == "-":
            return x - float(m.group(2))
        return x
    return float(item)


def vector26(spec: str, *, presets: Mapping[str, str] | None = None, x: float | None = None, seed: int = 0) -> list[float] | None:
    """The 26-slot vector LBW uses for ``spec``, or None when the spec is neither a preset nor a vector (LBW then
    applies every block at 1). ``seed`` makes R and U reproducible."""
    table = {**DEFAULT_PRESETS, **(presets or {})}
    raw = table.get(spec, spec)
    if not is_vector(raw) or vector_fault(raw):
        return None
    rng = random.Random(f"{seed}:{spec}")
    values = [_value(v, 1.0 if x is None else x, rng) for v in raw.split(",")]
    if len(values) == 26:
        return values
    if len(values) == FLUX_LENGTH:
        return None  # Flux layout: not applicable to SD models
    out = [0.0] * 26
    for block, value in zip(LAYOUTS[len(values)], values):
        out[BLOCK_IDS_26.index(block)] = value
    return out


def flux_vector(spec: str, *, presets: Mapping[str, str] | None = None, x: float | None = None, seed: int = 0) -> list[float] | None:
    """The 61 Flux slot weights for ``spec`` (a 61-value vector or a preset holding one), else None."""
    table = {**DEFAULT_PRESETS, **(presets or {})}
    raw = table.get(spec, spec)
    if raw.count(",") + 1 != FLUX_LENGTH or vector_fault(raw):
        return None
    rng = random.Random(f"{seed}:{spec}")
    return [_value(v, 1.0 if x is None else x, rng) for v in raw.split(",")]


def _flux_refusal(spec: str, presets: Mapping[str, str] | None) -> str:
    table = {**DEFAULT_PRESETS, **(presets or {})}
    raw = table.get(spec, spec)
    what = f"preset {spec!r}" if spec in table else "the block vector"
    if is_vector(raw):
        return (f"block weights: {what} has {raw.count(',') + 1} values (an SD layout); a Flux LoRA needs "
                f"{FLUX_LENGTH} (CLIP, T5, IN, D00-D18, S00-S37, OUT; e.g. FLUXALL): every block at 1")
    return f"block weights {spec!r} not recognised: every block at 1"


def _expand_blocks(text: str, ids: tuple[str, ...] = BLOCK_IDS_26) -> list[str]:
    """``IN05-OUT05 M00`` (Flux: ``D00-D18``) → the IDs in those ranges (LBW's ``hyphener``)."""
    out: list[str] = []
    for part in text.split(" "):
        if "-" in part:
            a, _, b = part.partition("-")
            if a in ids and b in ids:
                i, j = sorted((ids.index(a), ids.index(b)))
                out.extend(ids[i : j + 1])
                continue
        out.append(part)
    return out


@dataclass(frozen=True)
class ElementRule:
    blocks: tuple[str, ...]
    blocks_negated: bool
    elements: tuple[str, ...]
    elements_negated: bool
    ratio: float


def parse_elemental(rules: str, ids: tuple[str, ...] = BLOCK_IDS_26) -> list[ElementRule]:
    """LBW's elemental directives ``BLOCKS:ELEMENTS:RATIO`` (ranges over ``ids``: the family's slot IDs)."""
    out: list[ElementRule] = []
    for directive in rules.replace("\n", ",").split(","):
        if directive.count(":") != 2:
            continue
        blocks, elements, ratio = directive.split(":")
        try:
            value = float(ratio)
        except ValueError:
            continue
        b = _expand_blocks(blocks.strip(), ids)
        e = elements.strip().split(" ")
        bn = bool(b) and b[0] == "NOT"
        en = bool(e) and e[0] == "NOT"
        out.append(ElementRule(tuple(b[1:] if bn else b), bn, tuple(e[1:] if en else e), en, value))
    return out


@dataclass(frozen=True)
class BlockWeights:
    """Resolved per-block weights for one LoRA on one family."""

    family: Family
    slots: tuple[float, ...]  # LBW's slot order: 26 values (SD1/SD2/SDXL) or 61 (Flux, BLOCK_IDS_FLUX)
    elemental: tuple[ElementRule, ...] = ()
    spec: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def ids(self) -> tuple[str, ...]:
        """The ID of each slot (``slots[i]`` is the weight of ``ids[i]``)."""
        return slot_space(self.family)

    @property
    def vector(self) -> dict[str, float]:
        """The full vector for the family's own layout (26 IDs for SD1/SD2, 20 for SDXL, 61 for Flux)."""
        ids = self.ids
        return {b: self.slots[ids.index(b)] for b in FULL_LAYOUT[self.family]}

    def weight_of_block(self, block: str) -> float:
        """The weight of one block ID of the family's space (1 for IDs outside it, e.g. OTHER)."""
        ids = self.ids
        return self.slots[ids.index(block)] if block in ids else 1.0

    def weight_for(self, module: str) -> float:
        if self.family is Family.FLUX or is_flux_module(module):
            return self._flux_weight_for(module)
        slot = slot_of(module)
        ratio = 1.0 if slot is None else self.slots[slot]
        if self.elemental:
            key = layer_name(module) + ("" if slot is None else BLOCK_IDS_26[slot])
            for rule in self.elemental:
                hit_block = any(b in key for b in rule.blocks)  # "" matches every key, as in LBW
                if hit_block == rule.blocks_negated:
                    continue
                hit_elem = any(e in key for e in rule.elements)
                if hit_elem == rule.elements_negated:
                    continue
                ratio = rule.ratio
        return ratio

    def _flux_weight_for(self, module: str) -> float:
        """LBW's ``ratiodealer`` for Flux: the block of the Forge patch key, elements matched on key + block ID."""
        block = flux_block_id(module)
        picked = block in BLOCK_IDS_FLUX and len(self.slots) == FLUX_LENGTH
        ratio = self.slots[BLOCK_IDS_FLUX.index(block)] if picked else 1.0
        if self.elemental:
            key = flux_patch_key(module) + (block or "Not Merge")
            for rule in self.elemental:
                if any(b in key for b in rule.blocks) == rule.blocks_negated:
                    continue
                if any(e in key for e in rule.elements) == rule.elements_negated:
                    continue
                ratio = rule.ratio
        return ratio

    @property
    def is_identity(self) -> bool:
        return not self.elemental and all(v == 1.0 for v in self.slots)


def resolve_block_weights(
    family: Family | str,
    lbw: str | None = None,
    *,
    lbwe: str | None = None,
    x: float | None = None,
    presets: Mapping[str, str] | None = None,
    elemental_presets: Mapping[str, str] | None = None,
    seed: int = 0,
) -> BlockWeights:
    """What LBW would do for ``lbw=``/``lbwe=``/``x=`` on a LoRA of ``family``."""
    family = Family(family)
    notes: list[str] = []
    flux = family is Family.FLUX
    slots = [1.0] * len(slot_space(family))
    if lbw is not None:
        if flux:
            vec = flux_vector(lbw, presets=presets, x=x, seed=seed)
            if vec is None:
                notes.append(_flux_refusal(lbw, presets))
        else:
            vec = vector26(lbw, presets=presets, x=x, seed=seed)
            if vec is None:
                raw = {**DEFAULT_PRESETS, **(presets or {})}.get(lbw, lbw)
                if raw.count(",") + 1 == FLUX_LENGTH and not vector_fault(raw):
                    notes.append(f"block weights {lbw!r} are Flux's {FLUX_LENGTH} values; this is an "
                                 f"{family.value.upper()} LoRA: every block at 1")
                else:
                    notes.append(f"block weights {lbw!r} not recognised: every block at 1")
        if vec is not None:
            slots = vec
    rules: list[ElementRule] = []
    if lbwe is not None:
        table = {**DEFAULT_ELEMENTAL, **(elemental_presets or {})}
        if lbwe in table:
            rules = parse_elemental(table[lbwe], slot_space(family))
        else:
            notes.append(f"unknown elemental preset {lbwe!r}: ignored")
    return BlockWeights(family, tuple(slots), tuple(rules), lbw, tuple(notes))
