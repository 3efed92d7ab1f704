"""Suggestions in the user's own syntax: per-LoRA weights and ``lbw=`` vectors that keep every block's combined
change under a budget, ``te=0`` where too many LoRAs change the text encoders, ``start``/``stop`` splits, baking."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ..formats.files import trigger_words
from ..formats.targets import Family
from ..syntax import StackEntry, format_entry, format_number
from ..syntax.blocks import FULL_LAYOUT, SHORT_LAYOUT, TE_BLOCKS, slot_space
from .changes import OTHER
from .findings import BUDGET_KAPPA, MANY_LORAS, RELATIVE_BUDGET, TE_MAX_LORAS, Finding
from .metrics import BlockMetrics, StackMetrics
from .stack import StackItem

STRUCTURE_SHARE = 0.6  # share of a LoRA's UNet energy in the deep (or the fine) blocks that makes it a structure (detail) LoRA
SPLIT_STEP = 10  # the step where a structure LoRA hands over to a detail LoRA

_SD_DEEP = ("IN06", "IN07", "IN08", "IN09", "IN10", "IN11", "M00", *(f"OUT{i:02d}" for i in range(6)))
_SD_FINE = (*(f"IN{i:02d}" for i in range(6)), *(f"OUT{i:02d}" for i in range(6, 12)))
DEEP_BLOCKS = {
    Family.SD1: _SD_DEEP,
    Family.SD2: _SD_DEEP,
    Family.SDXL: ("IN06", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02"),
}  # the low-resolution levels: composition, pose
FINE_BLOCKS = {
    Family.SD1: _SD_FINE,
    Family.SD2: _SD_FINE,
    Family.SDXL: (*(f"IN{i:02d}" for i in range(6)), *(f"OUT{i:02d}" for i in range(3, 9))),
}  # the high-resolution levels: texture, detail
# Flux has no resolution levels (every double and single block sees all tokens): no time split is suggested there.


@dataclass(frozen=True)
class Suggestion:
    kind: str  # budget, te, time-split, bake
    message: str
    entries: tuple[StackEntry, ...] = ()

    @property
    def tags(self) -> str:
        return " ".join(format_entry(e) for e in self.entries)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message, "tags": self.tags}


def block_budget(block: BlockMetrics) -> float:
    """κ × the strongest LoRA's change in the block, and at most ``RELATIVE_BUDGET``·‖W0‖ when the base is known."""
    budget = BUDGET_KAPPA * max(block.norms(), default=0.0)
    if block.base_sq:
        budget = min(budget, RELATIVE_BUDGET * math.sqrt(block.base_sq))
    return budget


def block_multipliers(block: BlockMetrics, budget: float) -> list[float]:
    """Factors per LoRA that bring the block's combined change down to ``budget``: the strongest LoRA stays, the
    others share one factor g from ``‖d + g·o‖ = budget`` (d: the strongest, o: the sum of the others); when the
    strongest alone is over the budget, every LoRA gets ``budget / ‖ΣΔW‖``."""
    n = block.gram.shape[0]
    ones = [1.0] * n
    total = block.combined
    if total <= budget * (1 + 1e-9) or total == 0:
        return ones
    norms = block.norms()
    d = max(range(n), key=lambda i: norms[i])
    if norms[d] >= budget:
        return [budget / total] * n
    g = block.gram
    others = [i for i in range(n) if i != d]
    g_dd = float(g[d, d])
    g_do = float(sum(g[d, i] for i in others))
    g_oo = float(sum(g[i, j] for i in others for j in others))
    # g_oo·x² + 2·g_do·x + (g_dd − budget²) = 0, positive root (the constant is negative, so one root is ≥ 0)
    c = g_dd - budget * budget
    disc = max(g_do * g_do - g_oo * c, 0.0)
    x = (-g_do + math.sqrt(disc)) / g_oo if g_oo > 0 else 1.0
    x = min(max(x, 0.0), 1.0)
    return [1.0 if i == d else x for i in range(n)]


def _down(x: float) -> float:
    """Two decimals, rounded toward zero (a weight never ends above what the budget allows)."""
    return math.trunc(round(x * 100, 6)) / 100


def _same(values: Sequence[float]) -> bool:
    return bool(values) and max(values) - min(values) < 1e-9


def entry_for(item: StackItem, factors: dict[str, float], family: Family) -> StackEntry | None:
    """``item``'s entry with each block ``b`` scaled by ``factors[b]`` (blocks the LoRA does not touch are left
    out), written as plain weights when one factor fits all, else as an ``lbw=`` vector in the family's LBW layout
    (the short one when the LoRA only touches its blocks: LBW sets the slots a vector does not name to 0)."""
    if all(f >= 1 - 1e-9 for f in factors.values()):
        return None
    e = item.entry
    unet_blocks = [b for b in factors if b not in TE_BLOCKS]
    te_blocks = [b for b in factors if b in TE_BLOCKS]
    plain = e.lbw is None and e.lbwe is None
    if e.lbwe is not None or (plain and _same(list(factors.values()))):
        c = min(factors.values())
        te = _down(e.te * c) if te_blocks else e.te
        unet = _down(e.unet * c) if unet_blocks else e.unet
        return replace(e, te=te, unet=unet)
    te_kept = all(factors[b] >= 1 - 1e-9 for b in te_blocks)
    if plain and unet_blocks and _same([factors[b] for b in unet_blocks]) and te_kept:
        return replace(e, unet=_down(e.unet * factors[unet_blocks[0]]))
    short = SHORT_LAYOUT.get(family)
    layout = short if short and set(factors) <= set(short) else FULL_LAYOUT[family]
    slots = item.slots
    ids = slot_space(family)
    values = []
    for b in layout:
        v = slots[ids.index(b)]
        f = factors.get(b, 1.0)
        values.append(_down(v * f) if f < 1 - 1e-9 else v)
    return replace(e, lbw=",".join(format_number(v) for v in values), x=None)


@dataclass
class Plan:
    suggestions: list[Suggestion]
    stack: list[StackEntry]  # the whole stack with the budget and TE suggestions applied
    budgets: dict[str, float]
    factors: dict[str, list[float]]  # block → factor per LoRA


def _te_drops(m: StackMetrics, items: Sequence[StackItem]) -> list[int]:
    """The LoRAs whose text-encoder change to switch off when more than ``TE_MAX_LORAS`` have one: those without
    trigger words first, then the smallest text-encoder change."""
    if m.te is None:
        return []
    carriers = [i for i in range(len(items)) if float(m.te.gram[i, i]) > 0]
    if len(carriers) <= TE_MAX_LORAS:
        return []
    ranked = sorted(carriers, key=lambda i: (not trigger_words(items[i].lora.metadata), -float(m.te.gram[i, i])))
    return sorted(ranked[TE_MAX_LORAS:])


def suggest(m: StackMetrics, items: Sequence[StackItem], findings: Sequence[Finding]) -> Plan:
    """The text-encoder drops are decided first; the block budgets then see the stack without those changes (a
    dropped LoRA may have been cancelling another one)."""
    n = len(items)
    drop = _te_drops(m, items)
    blocks = {b: blk for b, blk in m.blocks.items() if b != OTHER}
    te_blocks = [b for b in blocks if b in TE_BLOCKS]  # BASE; Flux: CLIP and T5
    if drop:
        keep = torch.ones(n, dtype=torch.float64)
        keep[drop] = 0
        for b in te_blocks:
            blocks[b] = replace(blocks[b], gram=blocks[b].gram * keep[:, None] * keep[None, :])
    budgets = {b: block_budget(blk) for b, blk in blocks.items()}
    factors = {b: block_multipliers(blk, budgets[b]) for b, blk in blocks.items()}
    if drop:
        for b in te_blocks:
            factors[b] = [0.0 if i in drop else f for i, f in enumerate(factors[b])]
    entries = [it.entry for it in items]
    suggestions: list[Suggestion] = []

    changed: list[StackEntry] = []
    over = [b for b, blk in blocks.items() if blk.combined > budgets[b] * (1 + 1e-9)]
    for i, item in enumerate(items):
        touched = {b: factors[b][i] for b, blk in blocks.items() if float(blk.gram[i, i]) > 0}  # dropped: no BASE
        new = entry_for(item, touched, m.family)
        if new is not None:
            entries[i] = new
            changed.append(new)
    if changed:
        suggestions.append(
            Suggestion(
                "budget",
                f"keep each block's combined change under its budget (κ = {BUDGET_KAPPA} × the strongest LoRA there"
                + (f", at most {RELATIVE_BUDGET:.0%} of the base weights" if m.has_base else "")
                + f"); over budget now: {', '.join(over)}",
                tuple(changed),
            )
        )
    if drop:
        for i in drop:
            entries[i] = replace(entries[i], te=0.0)
        names = ", ".join(items[i].name for i in drop)
        suggestions.append(
            Suggestion(
                "te",
                f"let at most {TE_MAX_LORAS} LoRAs change the text encoders: te=0 for {names} "
                "(no trigger words, or the smallest text-encoder change)",
                tuple(entries[i] for i in drop),
            )
        )

    suggestions += _time_splits(m, items, findings)
    if n > MANY_LORAS:
        suggestions.append(
            Suggestion(
                "bake",
                f"{n} LoRAs: bake the ones you always use together into one LoRA "
                "(python -m lib_lorastack bake … --out baked.safetensors) and keep only the variable ones in the prompt",
            )
        )
    return Plan(suggestions, entries, budgets, factors)


def _share(m: StackMetrics, i: int, which: Sequence[str]) -> float:
    unet = [b for b in m.blocks if b not in TE_BLOCKS and b != OTHER]
    total = sum(float(m.blocks[b].gram[i, i]) for b in unet)
    part = sum(float(m.blocks[b].gram[i, i]) for b in unet if b in which)
    return part / total if total else 0.0


def _time_splits(m: StackMetrics, items: Sequence[StackItem], findings: Sequence[Finding]) -> list[Suggestion]:
    if m.family not in DEEP_BLOCKS:
        return []
    index = {it.name: i for i, it in enumerate(items)}
    seen: set[tuple[int, int]] = set()
    out: list[Suggestion] = []
    for f in findings:
        if f.kind not in ("reinforce", "crosstalk", "collision") or len(f.loras) != 2:
            continue
        a, b = index[f.loras[0]], index[f.loras[1]]
        for s, d in ((a, b), (b, a)):
            if (s, d) in seen:
                continue
            structure = _share(m, s, DEEP_BLOCKS[m.family]) >= STRUCTURE_SHARE
            detail = _share(m, d, FINE_BLOCKS[m.family]) >= STRUCTURE_SHARE
            if structure and detail:
                seen.add((s, d))
                es = replace(items[s].entry, stop=SPLIT_STEP)
                ed = replace(items[d].entry, start=SPLIT_STEP)
                out.append(
                    Suggestion(
                        "time-split",
                        f"{items[s].name} acts mostly on the deep blocks (composition), {items[d].name} on the fine "
                        f"ones (detail): give them different steps ({items[s].name} until step {SPLIT_STEP}, "
                        f"{items[d].name} from it; for 20-30 sampling steps)",
                        (es, ed),
                    )
                )
    return out
