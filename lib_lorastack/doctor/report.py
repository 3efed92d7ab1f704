"""``diagnose``: a stack → measured, explained and with suggestions; as text, as JSON-able data and as a picture."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..formats.targets import Family
from ..syntax import StackEntry, format_entry
from .basefile import BaseCheckpoint
from .findings import WARNING, Finding, find
from .heatmap import heatmap_png
from .metrics import StackMetrics, measure
from .progress import ProgressFn, no_progress
from .stack import StackItem, rename_duplicates
from .suggestions import Plan, Suggestion, suggest


@dataclass
class DoctorReport:
    metrics: StackMetrics
    items: list[StackItem]
    findings: list[Finding]
    plan: Plan
    base: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def family(self) -> Family:
        return self.metrics.family

    @property
    def suggestions(self) -> list[Suggestion]:
        return self.plan.suggestions

    @property
    def suggested_stack(self) -> list[StackEntry]:
        return self.plan.stack

    def png(self) -> bytes:
        """The heatmap as PNG bytes."""
        return heatmap_png(self.metrics, legend=[f"#{i + 1} = {format_entry(it.entry)}" for i, it in enumerate(self.items)])

    def text(self, *, layers: int = 5) -> str:
        return format_report(self, layers=layers)

    def to_dict(self) -> dict:
        m = self.metrics
        n = len(m.names)

        def matrix(t: torch.Tensor) -> list[list[float | None]]:
            return [[None if math.isnan(float(v)) else round(float(v), 6) for v in row] for row in t]

        def block_dict(blk) -> dict:
            return {
                "targets": blk.targets,
                "norms": [round(v, 6) for v in blk.norms()],
                "combined": round(blk.combined, 6),
                "independent": round(blk.independent, 6),
                "excess": None if blk.excess is None else round(blk.excess, 6),
                "relative": None if blk.relative is None else round(blk.relative, 6),
                "cosine": matrix(blk.cosine()),
                "in_overlap": matrix(blk.in_overlap),
                "out_overlap": matrix(blk.out_overlap),
                "budget": round(self.plan.budgets[blk.block], 6) if blk.block in self.plan.budgets else None,
                "factors": self.plan.factors.get(blk.block),
            }

        return {
            "family": m.family.value,
            "base": self.base,
            "seconds": round(m.seconds, 4),
            "loras": [
                {"name": it.name, "tag": format_entry(it.entry), "path": it.path, "layers": len(it.lora.modules)}
                for it in self.items
            ],
            "blocks": {b: block_dict(blk) for b, blk in m.blocks.items()},
            "unet": None if m.unet is None else block_dict(m.unet),
            "te": None if m.te is None else block_dict(m.te),
            "layers": [
                {
                    "target": str(t.target),
                    "block": t.block,
                    "loras": [m.names[i] for i in t.present],
                    "norms": [round(math.sqrt(max(float(t.gram[i, i]), 0.0)), 6) for i in range(n)],
                    "combined": round(t.combined, 6),
                    "relative": None if t.relative is None else round(t.relative, 6),
                }
                for t in m.targets
            ],
            "findings": [f.to_dict() for f in self.findings],
            "suggestions": [s.to_dict() for s in self.suggestions],
            "suggested_stack": " ".join(format_entry(e) for e in self.suggested_stack),
            "skipped": m.skipped,
            "notes": self.notes,
        }


def diagnose(
    items: Sequence[StackItem],
    family: Family | str | None = None,
    *,
    base: BaseCheckpoint | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    progress: ProgressFn = no_progress,
) -> DoctorReport:
    """Measure a stack and explain it. ``family`` defaults to the first LoRA's."""
    items = rename_duplicates(list(items))
    if not items:
        raise ValueError("the stack is empty")
    family = Family(family or items[0].lora.family)
    metrics = measure(items, family, base=base, dtype=dtype, device=device, progress=progress)
    findings = find(metrics, items)
    plan = suggest(metrics, items, findings)
    notes = [f"{it.name}: {len(it.lora.problems)} module(s) of the file skipped: {it.lora.problems[0]}" for it in items if it.lora.problems]
    return DoctorReport(metrics, items, findings, plan, str(base.path) if base is not None else None, notes)


def _num(v: float | None, digits: int = 3) -> str:
    if v is None or math.isnan(v):
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}g}" if abs(v) < 0.001 and v != 0 else f"{v:.{digits}f}"


def _fixed(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}".replace("-0.00", "0.00")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return ["  " + fmt(header), *("  " + fmt(r) for r in rows)]


def _block_tables(report: DoctorReport) -> list[str]:
    """The per-block table (changes, excess, budget) and the pairwise table (cosine / overlaps)."""
    m = report.metrics
    n = len(m.names)
    rel = m.has_base
    lines: list[str] = []
    lines.append("")
    lines.append(
        "Change per block: ‖s·ΔW‖ of each LoRA and of the stack"
        + (", as % of ‖W0‖" if rel else "")
        + "; excess = ‖ΣΔW‖ / √Σ‖ΔW‖² (1 = independent); budget and the factors that meet it"
    )
    header = ["block", *(f"#{i + 1}" for i in range(n)), "stack", "excess", "budget"]
    rows = []
    for b, blk in m.blocks.items():
        scale = 100 / math.sqrt(blk.base_sq) if rel and blk.base_sq else 1.0
        norms = [_num(v * scale) if float(blk.gram[i, i]) > 0 else "-" for i, v in enumerate(blk.norms())]
        budget = report.plan.budgets.get(b)
        factors = report.plan.factors.get(b)
        trimmed = budget is not None and factors is not None and min(factors) < 1
        rows.append(
            [
                b,
                *norms,
                _num(blk.combined * scale),
                _num(blk.excess, 2),
                "-" if budget is None else _num(budget * scale) + (" ×" + "/".join(f"{f:.2f}" for f in factors) if trimmed else ""),
            ]
        )
    lines += _table(header, rows)
    if n > 1:
        lines.append("")
        lines.append("Pairwise, per block: cosine of the changes / input-space overlap / output-space overlap")
        pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
        header = ["block", *(f"#{a + 1}·#{b + 1}" for a, b in pairs)]
        rows = []
        for blk_name, blk in m.blocks.items():
            if int((blk.gram.diagonal() > 0).sum()) < 2:
                continue
            cos = blk.cosine()
            rows.append(
                [blk_name]
                + [
                    "/".join(_fixed(float(t[a, b])) for t in (cos, blk.in_overlap, blk.out_overlap))
                    for a, b in pairs
                ]
            )
        lines += _table(header, rows)
    return lines


def format_report(report: DoctorReport, *, layers: int = 5) -> str:
    m = report.metrics
    n = len(m.names)
    lines = [
        f"Stack doctor: {m.family.value.upper()}, {n} LoRA{'s' if n != 1 else ''}, {len(m.targets)} layers, "
        f"measured in {m.seconds:.2f} s" + (f"; base {report.base}" if report.base else "; no base checkpoint"),
    ]
    for i, it in enumerate(report.items):
        lines.append(f"  #{i + 1} {it.name}: {format_entry(it.entry)} ({len(it.lora.modules)} layers)")
    rel = m.has_base
    if m.blocks:
        lines += _block_tables(report)
    else:
        lines += ["", "Nothing to measure: no LoRA of the stack changes a layer at a non-zero strength"]
    if layers and m.targets:
        key = (lambda t: t.relative or 0.0) if rel else (lambda t: t.combined)
        top = sorted(m.targets, key=key, reverse=True)[:layers]
        lines.append("")
        lines.append(f"Layers with the largest combined change{' (relative to ‖W0‖)' if rel else ''}:")
        for t in top:
            value = f"{t.relative:.1%}" if rel and t.relative is not None else _num(t.combined)
            lines.append(f"  {t.block:6s} {t.target}: {value}")
    lines.append("")
    if report.findings:
        lines.append("Findings:")
        for f in report.findings:
            lines.append(f"  {'!' if f.severity == WARNING else '-'} {f.message}")
    else:
        lines.append("Findings: none; the LoRAs do not get in each other's way")
    if report.suggestions:
        lines.append("")
        lines.append("Suggestions:")
        for s in report.suggestions:
            lines.append(f"  * {s.message}")
            if s.entries:
                lines.append(f"      {s.tags}")
        stack = " ".join(format_entry(e) for e in report.suggested_stack)
        if stack != " ".join(format_entry(it.entry) for it in report.items):
            lines.append("")
            lines.append("Suggested stack (budget and text-encoder suggestions applied):")
            lines.append(f"  {stack}")
    for note in report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
