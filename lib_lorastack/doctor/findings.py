"""What the numbers mean for the user: findings in plain words, with documented thresholds (docs/doctor.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..formats.files import trigger_words
from ..formats.keymap import family_hint
from ..syntax.blocks import TE_BLOCKS
from .changes import OTHER
from .metrics import BlockMetrics, StackMetrics
from .stack import StackItem

COSINE_CONFLICT = 0.30  # |cos(ΔW_a, ΔW_b)| in a block at which two LoRAs pull together (or against each other)
SHARE_MIN = 0.10  # a LoRA must hold this share of a block's energy for a pair finding there
OVERLAP_CONFLICT = 0.30  # subspace overlap at which two LoRAs read (input) or write (output) the same directions
OVER_CHANCE = 2.0  # … and at least this many times what two random spaces of the same sizes would give
EXCESS_HIGH = 1.25  # ‖ΣΔW‖ / √Σ‖ΔW_a‖² at which the changes reinforce
EXCESS_LOW = 0.80  # … and at which they cancel
RELATIVE_BUDGET = 0.30  # ‖ΣΔW‖/‖W0‖ of a block above which the stack moves the model a lot (needs the base)
BUDGET_KAPPA = 1.3  # a block's combined change should stay under κ × its strongest LoRA's change
TE_MAX_LORAS = 2  # more LoRAs than this changing the text encoders compound before cross-attention
MANY_LORAS = 4  # more LoRAs than this: bake the fixed part
TRIGGER_TOP = 10  # trigger words compared: each LoRA's most frequent training tags

WARNING, INFO = "warning", "info"


@dataclass(frozen=True)
class Finding:
    kind: str
    severity: str
    message: str
    loras: tuple[str, ...] = ()
    blocks: tuple[str, ...] = ()
    value: float | None = None

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "loras": list(self.loras),
            "blocks": list(self.blocks),
            "value": self.value,
        }


def block_runs(blocks: Sequence[str], present: Sequence[str]) -> list[list[str]]:
    """Group ``blocks`` into runs that are consecutive in ``present`` (the measured blocks in layout order)."""
    position = {b: i for i, b in enumerate(present)}
    runs: list[list[str]] = []
    for b in sorted(blocks, key=lambda x: position[x]):
        if runs and position[b] == position[runs[-1][-1]] + 1:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def run_label(run: Sequence[str]) -> str:
    return run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}"


def merge_blocks(blocks: Sequence[BlockMetrics]) -> BlockMetrics:
    """Several blocks as one: Gram matrices summed, overlaps averaged with weights √(G_aa·G_bb)."""
    n = blocks[0].gram.shape[0]
    gram = sum((b.gram for b in blocks), torch.zeros(n, n, dtype=torch.float64))
    sums = {k: torch.zeros(n, n, dtype=torch.float64) for k in ("out_overlap", "in_overlap", "out_chance", "in_chance")}
    weight = torch.zeros(n, n, dtype=torch.float64)
    for b in blocks:
        d = b.gram.diagonal().clamp_min(0).sqrt()
        w = d[:, None] * d[None, :]
        w = torch.where(torch.isnan(b.out_overlap), torch.zeros_like(w), w)
        weight += w
        for k in sums:
            sums[k] += torch.where(w > 0, getattr(b, k) * w, torch.zeros_like(w))
    nan = torch.full_like(weight, float("nan"))
    avg = {k: torch.where(weight > 0, v / weight.clamp_min(1e-300), nan) for k, v in sums.items()}
    base = None if any(b.base_sq is None for b in blocks) else sum(b.base_sq for b in blocks)  # type: ignore[misc]
    return BlockMetrics("+".join(b.block for b in blocks), sum(b.targets for b in blocks), gram, base_sq=base, **avg)


def _pairs(n: int):
    return [(a, b) for a in range(n) for b in range(a + 1, n)]


def _both_matter(block: BlockMetrics, a: int, b: int) -> bool:
    shares = block.shares()
    return shares[a] >= SHARE_MIN and shares[b] >= SHARE_MIN


def _pair_findings(m: StackMetrics) -> list[Finding]:
    present = [b for b in m.blocks if b != OTHER]
    out: list[Finding] = []
    for a, b in _pairs(len(m.names)):
        na, nb = m.names[a], m.names[b]
        for kind, field in _PAIR_CHECKS:
            flagged = [x for x in present if _both_matter(m.blocks[x], a, b) and _pair_hit(kind, m.blocks[x], a, b)]
            if not flagged:
                continue
            parts, values = [], []
            for run in block_runs(flagged, present):
                merged = merge_blocks([m.blocks[x] for x in run])
                value = float(merged.cosine()[a, b]) if field == "cosine" else float(getattr(merged, field)[a, b])
                values.append(value)
                parts.append(f"{run_label(run)} ({'cosine' if field == 'cosine' else 'overlap'} {value:.2f})")
            where = ", ".join(parts)
            text = {
                "reinforce": f"{na} and {nb} pull the same directions in {where}: together they push further than "
                "either alone (burn, over-saturation)",
                "cancel": f"{na} and {nb} push against each other in {where}: they partly cancel there",
                "crosstalk": f"{na} and {nb} read the same input features in {where}: each also reacts to what "
                "triggers the other (concept bleed)",
                "collision": f"{na} and {nb} write into the same output directions in {where}",
            }[kind]
            worst = max(values, key=abs)
            out.append(Finding(kind, WARNING, text, (na, nb), tuple(flagged), worst))
    return out


_PAIR_CHECKS = (("reinforce", "cosine"), ("cancel", "cosine"), ("crosstalk", "in_overlap"), ("collision", "out_overlap"))


def _pair_hit(kind: str, blk: BlockMetrics, a: int, b: int) -> bool:
    if kind == "reinforce":
        return float(blk.cosine()[a, b]) >= COSINE_CONFLICT
    if kind == "cancel":
        return float(blk.cosine()[a, b]) <= -COSINE_CONFLICT
    if kind == "crosstalk":
        return _overlap_hit(blk.in_overlap[a, b], blk.in_chance[a, b])
    return _overlap_hit(blk.out_overlap[a, b], blk.out_chance[a, b])


def _overlap_hit(overlap: torch.Tensor, chance: torch.Tensor) -> bool:
    ov, ch = float(overlap), float(chance)
    return not math.isnan(ov) and ov >= OVERLAP_CONFLICT and ov >= OVER_CHANCE * ch


def _block_findings(m: StackMetrics) -> list[Finding]:
    present = [b for b in m.blocks if b != OTHER]
    out: list[Finding] = []
    several = [b for b in present if int((m.blocks[b].gram.diagonal() > 0).sum()) >= 2]
    high = [b for b in several if (m.blocks[b].excess or 0) >= EXCESS_HIGH]
    low = [b for b in several if (m.blocks[b].excess or 1) <= EXCESS_LOW]
    for kind, flagged, word in (("excess", high, "more"), ("cancellation", low, "less")):
        if not flagged:
            continue
        parts = []
        for run in block_runs(flagged, present):
            merged = merge_blocks([m.blocks[x] for x in run])
            parts.append(f"{run_label(run)} ({merged.excess:.2f}×)")
        out.append(
            Finding(
                kind,
                WARNING if kind == "excess" else INFO,
                f"the combined change is {word} than independent LoRAs would give in {', '.join(parts)} "
                "(‖ΣΔW‖ / √Σ‖ΔW‖²; 1 = independent)",
                blocks=tuple(flagged),
                value=max(m.blocks[b].excess or 0 for b in flagged),
            )
        )
    if m.has_base:
        strong = [b for b in present if (m.blocks[b].relative or 0) >= RELATIVE_BUDGET]
        if strong:
            parts = [
                f"{run_label(run)} ({merge_blocks([m.blocks[x] for x in run]).relative:.0%})"
                for run in block_runs(strong, present)
            ]
            out.append(
                Finding(
                    "strong-change",
                    WARNING,
                    f"the stack moves {', '.join(parts)} of the base weights (‖ΣΔW‖/‖W0‖; budget {RELATIVE_BUDGET:.0%})",
                    blocks=tuple(strong),
                    value=max(m.blocks[b].relative or 0 for b in strong),
                )
            )
    return out


def _te_findings(m: StackMetrics) -> list[Finding]:
    if m.te is None:
        return []
    carriers = [m.names[i] for i, v in enumerate(m.te.gram.diagonal()) if float(v) > 0]
    te_ids = tuple(b for b in m.blocks if b in TE_BLOCKS) or ("BASE",)
    out = []
    if len(carriers) > TE_MAX_LORAS:
        out.append(
            Finding(
                "te-load",
                WARNING,
                f"{len(carriers)} LoRAs change the text encoders ({', '.join(carriers)}): their changes add up before "
                "cross-attention and can make the prompt lose its hold",
                tuple(carriers),
                te_ids,
                float(len(carriers)),
            )
        )
    if m.te.relative is not None:
        out.append(
            Finding(
                "te-change",
                WARNING if m.te.relative >= RELATIVE_BUDGET else INFO,
                f"the text encoders move by {m.te.relative:.1%} of their weights (UNet: "
                f"{(m.unet.relative if m.unet and m.unet.relative is not None else 0):.1%})",
                tuple(carriers),
                te_ids,
                m.te.relative,
            )
        )
    return out


def _metadata_findings(m: StackMetrics, items: Sequence[StackItem]) -> list[Finding]:
    out: list[Finding] = []
    for item in items:
        meta = item.lora.metadata
        hint = family_hint(meta)
        if hint is not None and hint != m.family:
            said = meta.get("ss_base_model_version") or meta.get("modelspec.architecture") or hint.value
            out.append(
                Finding(
                    "base-mismatch",
                    WARNING,
                    f"{item.name} says it was trained for {hint.value.upper()} ({said}); the stack is {m.family.value.upper()}",
                    (item.name,),
                )
            )
    models = {it.name: it.lora.metadata.get("ss_sd_model_name") for it in items if it.lora.metadata.get("ss_sd_model_name")}
    if len(set(models.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in models.items())
        out.append(Finding("base-models", INFO, f"the LoRAs were trained on different checkpoints ({listing})", tuple(models)))
    triggers = {it.name: trigger_words(it.lora.metadata, TRIGGER_TOP) for it in items}
    for a, b in _pairs(len(items)):
        na, nb = items[a].name, items[b].name
        shared = [t for t in triggers[na] if t in set(triggers[nb])]
        if shared:
            out.append(
                Finding(
                    "shared-triggers",
                    WARNING,
                    f"{na} and {nb} share trigger words ({', '.join(shared)}): these words in the prompt call up both",
                    (na, nb),
                )
            )
    return out


def _stack_findings(m: StackMetrics, items: Sequence[StackItem]) -> list[Finding]:
    out: list[Finding] = []
    for item in items:
        labels = sorted({a.label for a in item.lora.modules.values() if not a.additive})
        if labels:
            out.append(
                Finding(
                    "order-dependent",
                    INFO,
                    f"{item.name} has {', '.join(labels)} modules: their change depends on the weights they are applied "
                    "to, so the result depends on the stack order"
                    + ("" if m.has_base else " (not measured: give the base checkpoint)"),
                    (item.name,),
                )
            )
        e = item.entry
        if e.start is not None or e.stop is not None:
            span = f"from step {e.start or 0}" + (f" to {e.stop}" if e.stop is not None else "")
            out.append(
                Finding("schedule", INFO, f"{item.name} is active only {span}; the doctor measures every LoRA together", (item.name,))
            )
    if len(items) > MANY_LORAS:
        out.append(
            Finding(
                "many",
                INFO,
                f"{len(items)} LoRAs: more than {MANY_LORAS} active LoRAs often give artefacts; bake the ones you always "
                "use into one LoRA (python -m lib_lorastack bake)",
                value=float(len(items)),
            )
        )
    return out


def find(m: StackMetrics, items: Sequence[StackItem]) -> list[Finding]:
    """Every finding, warnings first."""
    found = [
        *_pair_findings(m),
        *_block_findings(m),
        *_te_findings(m),
        *_metadata_findings(m, items),
        *_stack_findings(m, items),
    ]
    for message in m.skipped[:3]:
        found.append(Finding("skipped", INFO, message))
    if len(m.skipped) > 3:
        found.append(Finding("skipped", INFO, f"… and {len(m.skipped) - 3} more modules not measured (same reason)"))
    return sorted(found, key=lambda f: f.severity != WARNING)
