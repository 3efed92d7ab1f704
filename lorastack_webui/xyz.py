"""Axes for the WebUI's X/Y/Z plot: a row's strength, a row's LoRA, a row's block weights, and the stack mode."""

from __future__ import annotations

from dataclasses import replace

from lib_lorastack.host.panel import MODES, PanelState, Row, parse_state
from lib_lorastack.syntax.lbw import DEFAULT_PRESETS

TITLE = "LoRA Stack"
AXIS_ROWS = 3


def _our_args(p) -> tuple[list, int] | None:
    for script in getattr(p.scripts, "alwayson_scripts", []):
        if script.title() == TITLE:
            return list(p.script_args), script.args_from
    return None


def _change(p, fn) -> None:
    found = _our_args(p)
    if found is None:
        raise RuntimeError("the LoRA Stack script is not active in this job")
    args, start = found
    state = parse_state(args[start + 1]).state
    args[start] = True  # the plot's rows apply even when the panel is closed
    args[start + 1] = fn(state).to_json()
    p.script_args = tuple(args)


def _with_row(state: PanelState, n: int, **changes) -> PanelState:
    rows = list(state.rows)
    panel_rows = [i for i, r in enumerate(rows) if not r.in_prompt]
    while len(panel_rows) < n:
        rows.append(Row())
        panel_rows.append(len(rows) - 1)
    i = panel_rows[n - 1]
    if "te" in changes:
        changes["unet"] = changes["te"]
    rows[i] = replace(rows[i], **changes)
    return replace(state, rows=tuple(rows))


def add_axes(lora_names) -> None:
    """Append our axes to the X/Y/Z plot script, if it is loaded (before its UI snapshots the list)."""
    from modules import scripts

    xyz = next((d.module for d in scripts.scripts_data if d.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid")), None)
    if xyz is None or any(getattr(a, "label", "").startswith(TITLE) for a in xyz.axis_options):
        return
    axes = [xyz.AxisOption(f"{TITLE}: mode", str, lambda p, x, xs: _change(p, lambda s: replace(s, mode=x)), choices=lambda: list(MODES))]
    for n in range(1, AXIS_ROWS + 1):
        axes += [
            xyz.AxisOption(f"{TITLE}: row {n} strength", float, lambda p, x, xs, n=n: _change(p, lambda s: _with_row(s, n, te=x))),
            xyz.AxisOption(f"{TITLE}: row {n} LoRA", str, lambda p, x, xs, n=n: _change(p, lambda s: _with_row(s, n, lora=x)), choices=lambda: lora_names(True)),
            xyz.AxisOption(f"{TITLE}: row {n} block weights", str, lambda p, x, xs, n=n: _change(p, lambda s: _with_row(s, n, lbw=x)), choices=lambda: list(DEFAULT_PRESETS)),
        ]
    xyz.axis_options.extend(axes)
