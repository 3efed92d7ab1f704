"""The doctor's picture: heatmaps (LoRAs × blocks) of each LoRA's change, the stack's, how the changes combine,
and the pairwise alignment and overlap; labelled with a real font through Pillow when it is there (else the built-in
bitmap font) and encoded as PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .font import BitmapFont, TrueTypeFont, best_font
from .metrics import StackMetrics
from .png import encode_png

CELL_W, CELL_H = 38, 16
PAD = 10
BLACK, WHITE, GREY, EMPTY = (0, 0, 0), (255, 255, 255), (120, 120, 120), (232, 232, 232)
_SEQ = ((255, 255, 255), (254, 224, 144), (253, 174, 97), (215, 48, 39), (120, 0, 30))
_DIV = ((49, 54, 149), (116, 173, 209), (255, 255, 255), (244, 109, 67), (165, 0, 38))


@dataclass
class Panel:
    title: str
    rows: list[str]
    values: list[list[float]]  # [row][column], NaN = no value
    kind: str = "seq"  # "seq": 0 … vmax; "div": -vmax … +vmax (centred at ``center``)
    vmax: float | None = None
    center: float = 0.0
    digits: int = 2


def _ramp(stops: Sequence[tuple[int, int, int]], t: float) -> tuple[int, int, int]:
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    f = t - i
    a, b = stops[i], stops[i + 1]
    return tuple(round(a[k] + (b[k] - a[k]) * f) for k in range(3))  # type: ignore[return-value]


def _cell_text(v: float, digits: int) -> str:
    if abs(v) >= 100:
        text = f"{v:.0f}"
    elif abs(v) >= 10:
        text = f"{v:.1f}"
    else:
        text = f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.00"


def _color(panel: Panel, v: float, vmax: float) -> tuple[int, int, int]:
    if panel.kind == "div":
        return _ramp(_DIV, 0.5 + 0.5 * (v - panel.center) / vmax)
    return _ramp(_SEQ, v / vmax)


def render(
    panels: Sequence[Panel], columns: Sequence[str], title: str, legend: Sequence[str] = (), font: BitmapFont | TrueTypeFont | None = None
) -> torch.Tensor:
    """The picture as uint8 ``[H, W, 3]`` (``font``: default the best there is, see ``font.best_font``)."""
    font = font or best_font()
    HEIGHT, text_width = font.height, font.width

    def draw_text(image, x, y, text, color, scale=1):
        font.draw(image, x, y, text, color, scale)

    cell_w = max([CELL_W, text_width("-0.00") + 8] + [text_width(c) + 6 for c in columns])
    label_w = max([text_width(r) for p in panels for r in p.rows] + [text_width("#0")]) + PAD
    width = max(
        PAD + label_w + cell_w * len(columns) + PAD,
        PAD * 2 + text_width(title, 2),
        PAD * 2 + max([text_width(line) for line in legend] + [0]),
        PAD * 2 + max(text_width(p.title) for p in panels),
    )
    line = HEIGHT + 5
    height = PAD + 2 * HEIGHT + 8
    for p in panels:
        height += line + line + CELL_H * len(p.rows) + 8
    height += line * len(legend) + PAD
    image = torch.full((height, width, 3), 255, dtype=torch.uint8)
    draw_text(image, PAD, PAD, title, BLACK, 2)
    y = PAD + 2 * HEIGHT + 8
    for p in panels:
        draw_text(image, PAD, y, p.title, BLACK)
        y += line
        for j, col in enumerate(columns):
            x = PAD + label_w + j * cell_w + (cell_w - text_width(col)) // 2
            draw_text(image, x, y, col, GREY)
        y += line
        finite = [abs(v - p.center) if p.kind == "div" else v for row in p.values for v in row if not math.isnan(v)]
        vmax = p.vmax or max([*finite, 1e-12])
        for i, (label, row) in enumerate(zip(p.rows, p.values)):
            top = y + i * CELL_H
            draw_text(image, PAD, top + (CELL_H - HEIGHT) // 2, label, BLACK)
            for j, v in enumerate(row):
                x0 = PAD + label_w + j * cell_w
                if math.isnan(v):
                    image[top + 1 : top + CELL_H, x0 + 1 : x0 + cell_w] = torch.tensor(EMPTY, dtype=torch.uint8)
                    continue
                color = _color(p, v, vmax)
                image[top + 1 : top + CELL_H, x0 + 1 : x0 + cell_w] = torch.tensor(color, dtype=torch.uint8)
                text = _cell_text(v, p.digits)
                ink = BLACK if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 140 else WHITE
                draw_text(image, x0 + 1 + (cell_w - 1 - text_width(text)) // 2, top + (CELL_H - HEIGHT) // 2 + 1, text, ink)
        y += CELL_H * len(p.rows) + 8
    for k, text in enumerate(legend):
        draw_text(image, PAD, y + k * line, text, BLACK)
    return image


def doctor_panels(m: StackMetrics) -> tuple[list[Panel], list[str]]:
    """The doctor's panels and their columns (the measured blocks)."""
    columns = list(m.blocks)
    n = len(m.names)
    tags = [f"#{i + 1}" for i in range(n)]
    rel = m.has_base

    def change(i: int | None) -> list[float]:
        out = []
        for b in columns:
            blk = m.blocks[b]
            norm = blk.combined if i is None else blk.norms()[i]
            if rel and blk.base_sq:
                out.append(100 * norm / math.sqrt(blk.base_sq))
            elif i is not None and float(blk.gram[i, i]) == 0:
                out.append(float("nan"))
            else:
                out.append(norm)
        return out

    unit = "% OF |W0|" if rel else "FROBENIUS NORM"
    panels = [
        Panel(
            f"CHANGE PER BLOCK: |S*DW| OF EACH LORA AND OF THE STACK ({unit})",
            [f"{tags[i]} {m.names[i][:24]}" for i in range(n)] + ["STACK"],
            [change(i) for i in range(n)] + [change(None)],
            digits=1 if rel else 2,
        )
    ]
    if n > 1:
        excess = [m.blocks[b].excess for b in columns]
        panels.append(
            Panel(
                "EXCESS: |SUM DW| / SQRT(SUM |DW|^2)  (1 = INDEPENDENT, >1 REINFORCE, <1 CANCEL)",
                ["EXCESS"],
                [[float("nan") if e is None else e for e in excess]],
                kind="div",
                vmax=1.0,
                center=1.0,
            )
        )
        pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
        labels = [f"{tags[a]} X {tags[b]}" for a, b in pairs]
        cos = [[float(m.blocks[c].cosine()[a, b]) for c in columns] for a, b in pairs]
        panels.append(Panel("PAIRWISE COSINE OF THE CHANGES (+ SAME DIRECTION, - OPPOSITE)", labels, cos, kind="div", vmax=1.0))
        inp = [[float(m.blocks[c].in_overlap[a, b]) for c in columns] for a, b in pairs]
        panels.append(Panel("INPUT-SPACE OVERLAP (CROSSTALK: 0 = DISJOINT, 1 = SAME FEATURES)", labels, inp, vmax=1.0))
        out = [[float(m.blocks[c].out_overlap[a, b]) for c in columns] for a, b in pairs]
        panels.append(Panel("OUTPUT-SPACE OVERLAP (0 = DISJOINT, 1 = SAME DIRECTIONS)", labels, out, vmax=1.0))
    return panels, columns


def heatmap_png(m: StackMetrics, *, legend: Sequence[str] | None = None, font: BitmapFont | TrueTypeFont | None = None) -> bytes:
    """The doctor's heatmap as PNG bytes (for the command line's ``--png`` and for a UI panel). ``legend``: the
    lines under the panels (default: which LoRA each ``#i`` is)."""
    panels, columns = doctor_panels(m)
    title = f"LORASTACK DOCTOR - {m.family.value.upper()} - {len(m.names)} LORAS"
    lines = [f"#{i + 1} = {name}" for i, name in enumerate(m.names)] if legend is None else list(legend)
    image = render(panels, columns, title, lines, font)
    return encode_png(image, text={"Software": "lib_lorastack doctor", "Title": title})


__all__ = ["Panel", "doctor_panels", "heatmap_png", "render"]
