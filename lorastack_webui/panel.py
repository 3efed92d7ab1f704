"""The "LoRA Stack" panel (gradio 3.41 in the WebUI, gradio 4.40 in Forge and Forge Neo): one line per LoRA (on,
LoRA, TE and UNet strengths with their link, in prompt, triggers, ↑ ↓ ✖) with its block weights and schedule behind
a per-row ⚙ toggle, kept in sync with the prompt's tags. Imports gradio and lib_lorastack only; what it needs from
the WebUI (the LoRA index, the model's family, the accordion component, preset expansion) comes in through
``PanelServices``, so the same panel runs in a plain gradio app for the browser tests.

Every event goes through the host-free model (``lib_lorastack.host.panel``) and returns the whole panel: the state
(one hidden JSON textbox, which is also the script's argument and the API's), the prompt, every row and the summary.
Row controls listen to ``input``/``blur`` (the user's own changes), the prompt to ``change``, so an update never
loops. A hidden "sync" button (clicked by javascript/lorastack-panel.js when typing pauses and when the page has
loaded) and the job's info box (``wire_job_end``) bring the rows, the summary and the model-dependent parts (LoRA
choices, the family's blocks) up to date without a panel change.
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gradio as gr

from lib_lorastack.formats.targets import Family
from lib_lorastack.host.panel import (
    MAX_ROWS,
    PanelState,
    Row,
    add_row,
    edit_row,
    move_in_stack,
    parse_state,
    remove_row,
    set_in_prompt,
    summary,
    sync_with_prompt,
)
from lib_lorastack.host.preset_rows import remove_preset_tags
from lib_lorastack.syntax.blocks import FULL_LAYOUT
from lib_lorastack.syntax.format import format_number
from lib_lorastack.syntax.lbw import DEFAULT_PRESETS, resolve_block_weights, spec_fault
from lib_lorastack.syntax.rewrite import add_words, has_words, remove_words

GRADIO_4 = int(gr.__version__.split(".")[0]) >= 4 if hasattr(gr, "__version__") else False
QUIET = {"show_progress": "hidden" if GRADIO_4 else False}


def _events(panel: Panel) -> dict:
    """How the panel's events run: quietly, and one at a time per tab (gradio 3.41's queue does that by itself;
    gradio 4 would run two of them at once, and the slower could write back what the other had just changed)."""
    if not GRADIO_4:
        return QUIET
    return {**QUIET, "concurrency_id": f"lorastack_{panel.tab}", "concurrency_limit": 1}


def _no_expansion(text: str) -> tuple[str, list[str]]:
    return text, []


# The newest state the panel wrote, per browser session. A browser sends an event's inputs when the event fires,
# and gradio 4 runs different events at once: an event fired before another one's answer came back carries the
# older state and would put it back. Each state the panel writes carries its time ("at"); an event that brings an
# older one than the session's newest works on the newest (a pasted state is newer, and wins).
_latest: dict[str, tuple[float, str]] = {}
_local = threading.local()
MAX_SESSIONS = 256


def _session(fn: Callable) -> Callable:
    """``fn`` as an event handler that knows its browser session (gradio passes the request)."""

    def handler(*args, request: gr.Request = None):  # type: ignore[assignment]
        _local.key = getattr(request, "session_hash", None)
        _local.prompt = args[1] if len(args) > 1 and isinstance(args[1], str) else None  # (state, prompt, …)
        try:
            return fn(*args)
        finally:
            _local.key = _local.prompt = None

    handler.__name__ = getattr(fn, "__name__", "handler")
    return handler


def _written_at(state_json: object) -> float:
    try:
        value = json.loads(state_json) if isinstance(state_json, str) else state_json
        return float(value.get("at", 0.0)) if isinstance(value, dict) else 0.0
    except (ValueError, TypeError):
        return 0.0


def _newest(state_json: str) -> str:
    key = getattr(_local, "key", None)
    seen = _latest.get(key) if key else None
    return seen[1] if seen is not None and seen[0] > _written_at(state_json) else state_json


def _stamped(state: PanelState) -> str:
    """The state's JSON with the time it was written; remembered as the session's newest."""
    at = time.time()
    data = json.loads(state.to_json())
    data["at"] = at
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    key = getattr(_local, "key", None)
    if key:
        if len(_latest) >= MAX_SESSIONS and key not in _latest:
            _latest.pop(next(iter(_latest)))
        _latest[key] = (at, text)
    return text


@dataclass
class PanelServices:
    """What the panel needs from its host. Nothing here may wait for the model: the UI is built before it loads,
    and ``family()`` / ``lora_names(False)`` answer for the loaded model or, before there is one, for none."""

    lora_names: Callable[[bool], list[str]]  # show_all → the names cards would insert (the model's family only unless show_all)
    lora_defaults: Callable[[str], tuple[float | None, str]]  # name → (preferred weight or None, trigger words)
    family: Callable[[], Family | None] = lambda: None
    block_presets: Callable[[], dict[str, str]] = dict
    wrong_family: Callable[[list[str]], list[str]] = lambda names: []
    last_job: Callable[[], str] = lambda: ""
    accordion: Callable | None = None  # the WebUI's InputAccordion (an accordion with an on/off switch)
    max_rows: int = 6
    presets: PresetActions | None = None
    doctor: DoctorActions | None = None
    expand: Callable[[str], tuple[str, list[str]]] = _no_expansion  # the prompt with <lorastack:…> as the job expands it, messages


@dataclass
class DoctorActions:
    """The stack doctor and the bake (each raises ``LoraStackError`` with a message for the user)."""

    run: Callable[..., tuple[str, str]]  # (state, prompt, with_base, progress) → (report text, heatmap PNG path)
    bake: Callable[..., str]  # (state, prompt, name, progress) → message


@dataclass
class PresetActions:
    """The panel's preset buttons (each raises ``LoraStackError`` subclasses with a message for the user)."""

    names: Callable[[], list[str]]
    rows_of: Callable[[str], tuple[list[Row], list[str]]]  # name → rows (found by hash first), messages
    save: Callable[..., list[str]]  # (name, state, prompt, triggers, overwrite=) → messages
    delete: Callable[[str], None]
    rename: Callable[[str, str], None]
    duplicate: Callable[[str, str], None]
    export: Callable[[list[str]], str]  # names → path of a JSON file to download
    import_file: Callable[[str], list[str]]  # path of an uploaded file → messages


# what ``render`` updates for each row, in this order
ROW_CONTROLS = ("group", "enabled", "lora", "te", "unet", "linked", "in_prompt", "more", "details", "preset", "lbw", "start", "stop")
ORDER_RULE = "Rows in stack order: the prompt's tags first (in the prompt's order), then the panel's own rows. ⚙ shows a row's block weights and steps."

_built: dict[str, Panel] = {}  # tab → its panel, for hooks that find components later (the job's info box)


@dataclass
class Panel:
    enabled: gr.components.Component
    state: gr.Textbox
    rows: list[dict] = field(default_factory=list)
    summary: gr.HTML | None = None
    multiplier: gr.Textbox | None = None
    wired: set = field(default_factory=set)
    tab: str = "txt2img"

    def row_outputs(self) -> list:
        return [r[name] for r in self.rows for name in ROW_CONTROLS]


def built_panel(tab: str) -> Panel | None:
    return _built.get(tab)


def build_panel(services: PanelServices, tab: str) -> Panel:
    """Create the panel's components (inside the caller's Blocks). ``tab``: "txt2img" or "img2img". Nothing of the
    model is needed here: the LoRA choices and the blocks follow the model when the page has loaded (``sync``)."""
    presets = {**DEFAULT_PRESETS, **services.block_presets()}
    names = services.lora_names(False)
    rows = []
    prefix = f"lorastack_{tab}"
    sync = gr.Button("sync", elem_id=f"{prefix}_sync", elem_classes=["lorastack-hidden"])
    if services.accordion is not None:
        accordion = services.accordion(False, label="LoRA Stack", elem_id=f"{prefix}_accordion")
        enabled = accordion
    else:  # plain gradio: an accordion with a checkbox inside
        accordion = gr.Accordion("LoRA Stack", open=False, elem_id=f"{prefix}_accordion")
        enabled = None
    with accordion:
        if enabled is None:
            enabled = gr.Checkbox(False, label="Enable the panel's rows", elem_id=f"{prefix}_enabled")
        state = gr.Textbox(PanelState().to_json(), visible=False, elem_id=f"{prefix}_state")
        with gr.Row(elem_id=f"{prefix}_toolbar", elem_classes=["lorastack-toolbar"]):
            multiplier = gr.Textbox("1", label="all ×", lines=1, max_lines=1, elem_id=f"{prefix}_multiplier", elem_classes=["lorastack-strength"], scale=0, min_width=70)
            add = gr.Button("Add row", elem_id=f"{prefix}_add", scale=1, min_width=80, size="sm")
            clear = gr.Button("Clear panel rows", elem_id=f"{prefix}_clear", scale=1, min_width=80, size="sm")
            show_all = gr.Checkbox(False, label="LoRAs of every base model", container=False, elem_id=f"{prefix}_show_all", scale=2, min_width=120)
            refresh = gr.Button("🔄", elem_id=f"{prefix}_refresh", scale=0, min_width=40, size="sm")
        gr.HTML(f"<div class='lorastack-hint'>{html.escape(ORDER_RULE)}</div>", elem_id=f"{prefix}_rule")
        for i in range(services.max_rows):
            r: dict = {}
            with gr.Group(visible=False, elem_id=f"{prefix}_row{i}", elem_classes=["lorastack-row"]) as r["group"]:
                with gr.Row(elem_classes=["lorastack-line"], equal_height=False):
                    r["enabled"] = gr.Checkbox(True, label="on", container=False, elem_id=f"{prefix}_row{i}_enabled", scale=0, min_width=28)
                    r["lora"] = gr.Dropdown(names, value=None, label=f"LoRA {i + 1}", show_label=False, container=False, allow_custom_value=True, elem_id=f"{prefix}_row{i}_lora", scale=6, min_width=120)
                    r["te"] = gr.Textbox("1", label="TE", show_label=False, container=False, lines=1, max_lines=1, elem_id=f"{prefix}_row{i}_te", elem_classes=["lorastack-strength"], scale=0, min_width=50)
                    r["linked"] = gr.Checkbox(True, label="🔗", container=False, elem_id=f"{prefix}_row{i}_linked", scale=0, min_width=36)
                    r["unet"] = gr.Textbox("1", label="UNet", show_label=False, container=False, lines=1, max_lines=1, elem_id=f"{prefix}_row{i}_unet", elem_classes=["lorastack-strength"], scale=0, min_width=50)
                    r["in_prompt"] = gr.Checkbox(False, label="prompt", container=False, elem_id=f"{prefix}_row{i}_in_prompt", scale=0, min_width=74)
                    r["triggers"] = gr.Button("🏷", elem_id=f"{prefix}_row{i}_triggers", scale=0, min_width=28, size="sm")
                    r["more"] = gr.Checkbox(False, label="⚙", container=False, elem_id=f"{prefix}_row{i}_more", scale=0, min_width=36)
                    r["up"] = gr.Button("↑", elem_id=f"{prefix}_row{i}_up", scale=0, min_width=24, size="sm")
                    r["down"] = gr.Button("↓", elem_id=f"{prefix}_row{i}_down", scale=0, min_width=24, size="sm")
                    r["remove"] = gr.Button("✖", elem_id=f"{prefix}_row{i}_remove", scale=0, min_width=24, size="sm")
                with gr.Row(visible=False, elem_id=f"{prefix}_row{i}_details", elem_classes=["lorastack-details"]) as r["details"]:
                    r["preset"] = gr.Dropdown(["", *presets], value="", label="Block preset", elem_id=f"{prefix}_row{i}_preset", scale=1, min_width=100)
                    r["lbw"] = gr.Textbox("", label="Block weights (preset or vector)", elem_id=f"{prefix}_row{i}_lbw", scale=3, min_width=140)
                    r["start"] = gr.Textbox("", label="start (step)", lines=1, max_lines=1, elem_id=f"{prefix}_row{i}_start", scale=1, min_width=60)
                    r["stop"] = gr.Textbox("", label="stop (step)", lines=1, max_lines=1, elem_id=f"{prefix}_row{i}_stop", scale=1, min_width=60)
            rows.append(r)
        with gr.Accordion("Block weights editor", open=False, elem_id=f"{prefix}_blocks"):
            with gr.Row():
                block_row = gr.Dropdown([], value=None, label="Row", elem_id=f"{prefix}_block_row", scale=1)
                load = gr.Button("Read the row's blocks", elem_id=f"{prefix}_block_load", scale=1)
                write = gr.Button("Write to the row", elem_id=f"{prefix}_block_write", scale=1)
            sliders = []
            with gr.Row():
                for b in ALL_BLOCKS:  # every family's blocks; SD1's shown until the model says otherwise (sync)
                    sliders.append(gr.Slider(-1.0, 2.0, value=1.0, step=0.05, label=b, visible=b in FULL_LAYOUT[Family.SD1], elem_id=f"{prefix}_block_{b}", min_width=90))
        preset_controls = _preset_controls(services, prefix) if services.presets is not None else None
        doctor_controls = _doctor_controls(prefix) if services.doctor is not None else None
        panel_summary = gr.HTML(_html(summary(PanelState(), "")), elem_id=f"{prefix}_summary")
    panel = Panel(enabled, state, rows, panel_summary, multiplier, tab=tab)
    panel.preset_controls = preset_controls  # type: ignore[attr-defined]
    panel.doctor_controls = doctor_controls  # type: ignore[attr-defined]
    panel.extras = dict(add=add, clear=clear, show_all=show_all, refresh=refresh, block_row=block_row, load=load, write=write, sliders=sliders, sync=sync)  # type: ignore[attr-defined]
    panel.services = services  # type: ignore[attr-defined]
    _built[tab] = panel
    return panel


def _preset_controls(services: PanelServices, prefix: str) -> dict:
    c: dict = {}
    with gr.Accordion("Presets", open=False, elem_id=f"{prefix}_presets"):
        with gr.Row():
            c["choice"] = gr.Dropdown(services.presets.names(), value=None, label="Preset", elem_id=f"{prefix}_preset_choice", scale=3)  # type: ignore[union-attr]
            c["refresh"] = gr.Button("🔄", elem_id=f"{prefix}_preset_refresh", scale=0, min_width=40)
            c["load"] = gr.Button("Load (replace rows)", elem_id=f"{prefix}_preset_load", scale=1)
            c["append"] = gr.Button("Append rows", elem_id=f"{prefix}_preset_append", scale=1)
        with gr.Row():
            c["name"] = gr.Textbox("", label="Name", elem_id=f"{prefix}_preset_name", scale=2)
            c["triggers"] = gr.Textbox("", label="Trigger words (optional)", elem_id=f"{prefix}_preset_triggers", scale=3)
            c["save"] = gr.Button("Save rows as", elem_id=f"{prefix}_preset_save", scale=1)
            c["update"] = gr.Button("Update the preset", elem_id=f"{prefix}_preset_update", scale=1)
        with gr.Row():
            c["rename"] = gr.Button("Rename to Name", elem_id=f"{prefix}_preset_rename", scale=1)
            c["duplicate"] = gr.Button("Duplicate as Name", elem_id=f"{prefix}_preset_duplicate", scale=1)
            c["confirm"] = gr.Checkbox(False, label="really delete", elem_id=f"{prefix}_preset_confirm", scale=1)
            c["delete"] = gr.Button("Delete", elem_id=f"{prefix}_preset_delete", scale=1, variant="stop")
        with gr.Row():
            c["export"] = gr.Button("Export", elem_id=f"{prefix}_preset_export", scale=1)
            c["file"] = gr.File(label="Exported / to import", elem_id=f"{prefix}_preset_file", scale=2)
            c["import"] = gr.Button("Import the file", elem_id=f"{prefix}_preset_import", scale=1)
    return c


def _doctor_controls(prefix: str) -> dict:
    c: dict = {}
    with gr.Accordion("Stack doctor", open=False, elem_id=f"{prefix}_doctor"):
        with gr.Row():
            c["run"] = gr.Button("Diagnose the stack", elem_id=f"{prefix}_doctor_run", scale=2)
            c["base"] = gr.Checkbox(False, label="compare with the checkpoint's weights (slower)", elem_id=f"{prefix}_doctor_base", scale=2)
            c["name"] = gr.Textbox("", label="Baked LoRA's name", elem_id=f"{prefix}_bake_name", scale=2)
            c["bake"] = gr.Button("Bake into one LoRA", elem_id=f"{prefix}_bake", scale=1)
        c["image"] = gr.Image(label="Change per block (rows: LoRAs)", show_label=False, interactive=False, elem_id=f"{prefix}_doctor_image")
        c["report"] = gr.Textbox("", label="Report", lines=12, interactive=False, elem_id=f"{prefix}_doctor_report")
    return c


ALL_BLOCKS = tuple(dict.fromkeys(b for layout in FULL_LAYOUT.values() for b in layout))  # one slider per block id of any family


def _block_ids(family: Family | None) -> tuple[str, ...]:
    return tuple(FULL_LAYOUT[family or Family.SD1])


def _html(lines: list[str]) -> str:
    return "<div class='lorastack-summary'>" + "<br>".join(html.escape(line) for line in lines) + "</div>"


def _has_details(row: Row) -> bool:
    return bool(row.lbw) or row.start is not None or row.stop is not None


def render(panel: Panel, state: PanelState, choices: list[str] | None = None) -> list:
    """Updates for every row control, from the state (``choices``: new LoRA choices for every row's dropdown). A
    row's ⚙ details open by themselves when it has block weights or steps; otherwise they stay as the user left
    them."""
    out = []
    presets = {**DEFAULT_PRESETS, **panel.services.block_presets()}  # type: ignore[attr-defined]
    lora_extra = {} if choices is None else {"choices": choices}
    for i, _r in enumerate(panel.rows):
        row = state.rows[i] if i < len(state.rows) else None
        if row is None:
            hidden = [gr.update()] * len(ROW_CONTROLS)
            hidden[0] = gr.update(visible=False)
            hidden[ROW_CONTROLS.index("more")] = gr.update(value=False)  # the next row shown here starts folded
            hidden[ROW_CONTROLS.index("details")] = gr.update(visible=False)
            if choices is not None:
                hidden[ROW_CONTROLS.index("lora")] = gr.update(**lora_extra)
            out += hidden
            continue
        details = _has_details(row)
        out += [
            gr.update(visible=True),
            gr.update(value=row.enabled),
            gr.update(value=row.lora or None, **lora_extra),
            gr.update(value=format_number(row.te)),
            gr.update(value=format_number(row.unet)),
            gr.update(value=row.linked),
            gr.update(value=row.in_prompt),
            gr.update(value=True) if details else gr.update(),
            gr.update(visible=True) if details else gr.update(),
            gr.update(value=row.lbw if row.lbw in presets else ""),
            gr.update(value=row.lbw),
            gr.update(value="" if row.start is None else str(row.start)),
            gr.update(value="" if row.stop is None else str(row.stop)),
        ]
    return out


def wire(panel: Panel, prompt: gr.Textbox) -> None:
    """Connect the panel to the tab's prompt textbox (once per panel)."""
    if id(prompt) in panel.wired:
        return
    panel.wired.add(id(prompt))
    services: PanelServices = panel.services  # type: ignore[attr-defined]
    presets = lambda: {**DEFAULT_PRESETS, **services.block_presets()}  # noqa: E731
    quiet = _events(panel)
    rows_out = panel.row_outputs()
    outputs = [panel.state, prompt, *rows_out, panel.summary]
    extras = panel.extras  # type: ignore[attr-defined]
    sliders = extras["sliders"]
    ids = list(ALL_BLOCKS)

    def lines_for(state: PanelState, text: str, notes: list[str] | None = None) -> list[str]:
        expanded, preset_notes = services.expand(text)
        lines = summary(
            state, text, known=services.lora_names(True), wrong_family=services.wrong_family([r.lora for r in state.rows if r.lora]),
            expanded=expanded, presets=presets(),
        )  # fmt: skip
        lines += [n for n in preset_notes if n not in lines]
        lines += notes or []
        last = services.last_job()
        if last:
            lines.append(f"Last job: {last}")
        return lines

    kept = {"text": None, "notes": []}  # an action's notes, for the prompt's change event that its new text fires

    def finish(state: PanelState, text: str, notes: list[str] | None = None) -> list:
        state = sync_with_prompt(state, text, presets())  # stack order, whatever the action did
        kept.update(text=text, notes=list(notes or []))
        # a prompt the action left as it was is not sent back: the user may have typed on meanwhile
        prompt_out = gr.update() if text == getattr(_local, "prompt", None) else text
        return [_stamped(state), prompt_out, *render(panel, state), _html(lines_for(state, text, notes))]

    panel.lines_for = lines_for  # type: ignore[attr-defined]

    def load(state_json: str) -> PanelState:
        return parse_state(_newest(state_json), presets()).state

    def on_prompt(state_json: str, text: str) -> list:
        text = text or ""
        loaded = load(state_json)
        result = finish(loaded, text, kept["notes"] if kept["text"] == text else None)
        if parse_state(result[0], presets()).state == loaded:
            # the rows are as they were: leave them alone, so that this event, which gradio may run beside a
            # later one (gradio 4 runs different events at once), cannot put back an older state
            return [gr.update(), *[gr.update()] * len(rows_out), result[-1]]
        return [result[0], *result[2:]]  # not the prompt itself: it is what changed

    # gradio 3.41 drops a trigger while the same event is still running, so fast typing can leave the rows one
    # keystroke behind: the sync button (clicked by javascript/lorastack-panel.js when typing pauses) and leaving
    # the box (blur) sync again with its final text.
    for event in (prompt.change, prompt.blur):
        event(_session(on_prompt), inputs=[panel.state, prompt], outputs=[panel.state, *rows_out, panel.summary], **quiet)

    def on_sync(state_json: str, text: str, show_all: bool) -> list:
        """Everything that may have changed without a panel event: the prompt, the last job, the loaded model
        (its LoRAs and blocks)."""
        loaded = load(state_json)
        state = sync_with_prompt(loaded, text or "", presets())
        shown = _block_ids(services.family())
        names = services.lora_names(bool(show_all))
        if state == loaded:  # only the choices and the summary (see on_prompt)
            i = ROW_CONTROLS.index("lora")
            rows = [gr.update(choices=names) if k % len(ROW_CONTROLS) == i else gr.update() for k in range(len(rows_out))]
            head = gr.update()
        else:
            rows, head = render(panel, state, names), _stamped(state)
        notes = kept["notes"] if kept["text"] == (text or "") else None  # an action's notes stay until the next action
        return [head, *rows, _html(lines_for(state, text or "", notes)), *[gr.update(visible=b in shown) for b in ids]]

    panel.sync = on_sync  # type: ignore[attr-defined]
    panel.sync_io = ([panel.state, prompt, extras["show_all"]], [panel.state, *rows_out, panel.summary, *sliders])  # type: ignore[attr-defined]
    extras["sync"].click(_session(on_sync), inputs=panel.sync_io[0], outputs=panel.sync_io[1], **quiet)  # type: ignore[attr-defined]
    for component in getattr(panel, "job_end", []):
        wire_job_end(panel, component)

    def on_state(state_json: str, current: str | None):
        """The block editor's row choice lists the rows there are."""
        count = len(load(state_json).rows)
        choices = [str(i + 1) for i in range(count)]
        return gr.update(choices=choices, value=current if current in choices else (choices[0] if choices else None))

    panel.state.change(_session(on_state), inputs=[panel.state, extras["block_row"]], outputs=[extras["block_row"]], **quiet)

    def edit(i: int, name: str) -> Callable:
        def handler(state_json: str, text: str, value):
            result = change(state_json, text, value)
            if name in ("te", "unet", "lbw", "start", "stop"):  # the box being typed in keeps its text
                result[2 + i * len(ROW_CONTROLS) + ROW_CONTROLS.index(name)] = gr.update()
            return result

        def change(state_json: str, text: str, value):
            state = load(state_json)
            if i >= len(state.rows):
                return finish(state, text)
            notes: list[str] = []
            changes: dict = {}
            if name in ("te", "unet"):
                try:
                    changes[name] = float(value)
                except (TypeError, ValueError):
                    return finish(state, text, [f"row {i + 1}: {name.upper() if name == 'te' else 'UNet'} {value!r} is not a number"])
            elif name in ("start", "stop"):
                value = str(value or "").strip()
                if value and not (value.isdigit()):
                    return finish(state, text, [f"row {i + 1}: {name} {value!r} is not a whole number of steps"])
                changes[name] = int(value) if value else None
            elif name == "lora":
                changes["lora"] = (value or "").strip()
                row = state.rows[i]
                if not row.in_prompt and changes["lora"] and changes["lora"] != row.lora:
                    weight, _ = services.lora_defaults(changes["lora"])
                    if weight:
                        changes["te"] = changes["unet"] = float(weight)
            elif name in ("lbw", "preset"):
                spec = (value or "").strip()
                fault = spec_fault(spec, presets()) if spec else None
                if fault:
                    return finish(state, text, [f"row {i + 1} blocks: {fault}"])
                changes["lbw"] = spec
            else:
                changes[name] = bool(value)
            if name == "in_prompt":
                state, text = set_in_prompt(state, text, i, bool(value))
            else:
                try:
                    state, text = edit_row(state, text, i, presets(), **changes)
                except ValueError as e:
                    notes.append(f"row {i + 1}: {e}")
            return finish(state, text, notes)

        return handler

    for i, r in enumerate(panel.rows):
        for name in ("enabled", "lora", "te", "unet", "linked", "in_prompt", "preset", "lbw", "start", "stop"):
            # number boxes (text boxes: gradio 4's Number has no blur) report when left or submitted (gradio 3.41
            # drops an event's triggers while it runs: typing "0.5" would otherwise stop at "0"); the others on
            # each user input
            if name in ("te", "unet", "start", "stop"):
                events = [r[name].blur, r[name].submit]
            else:
                events = [r[name].input]
            if name == "lbw":
                events.append(r[name].blur)  # validated as you type; the final text counts when the box is left
            for event in events:
                event(_session(edit(i, name)), inputs=[panel.state, prompt, r[name]], outputs=outputs, **quiet)
        r["more"].input(lambda value: gr.update(visible=bool(value)), inputs=[r["more"]], outputs=[r["details"]], **quiet)

        def button(i: int, action: str) -> Callable:
            def handler(state_json: str, text: str):
                state = load(state_json)
                if i >= len(state.rows):
                    return finish(state, text)
                note = None
                if action in ("up", "down"):
                    state, text, note = move_in_stack(state, text, i, -1 if action == "up" else 1)
                elif action == "remove":
                    state, text = remove_row(state, text, i)
                elif action == "triggers":
                    _weight, words = services.lora_defaults(state.rows[i].lora)
                    if not words:
                        return finish(state, text, [f"row {i + 1}: {state.rows[i].lora or 'no LoRA'} has no trigger words"])
                    text = (remove_words(text, words) if has_words(text, words) else add_words(text, words)).text
                return finish(state, text, [note] if note else None)

            return handler

        for action in ("up", "down", "remove", "triggers"):
            r[action].click(_session(button(i, action)), inputs=[panel.state, prompt], outputs=outputs, **quiet)

    def on_add(state_json: str, text: str):
        return finish(add_row(load(state_json), limit=min(MAX_ROWS, len(panel.rows))), text)

    def on_clear(state_json: str, text: str):
        state = load(state_json)
        return finish(PanelState(tuple(r for r in state.rows if r.in_prompt), state.multiplier, state.mode), text)

    def on_multiplier(state_json: str, text: str, value):
        state = load(state_json)
        try:
            m = min(max(float(value), 0.0), 2.0)
        except (TypeError, ValueError):
            return finish(state, text, [f"all strengths ×: {value!r} is not a number"])
        return finish(PanelState(state.rows, m, state.mode), text)

    extras["add"].click(_session(on_add), inputs=[panel.state, prompt], outputs=outputs, **quiet)
    extras["clear"].click(_session(on_clear), inputs=[panel.state, prompt], outputs=outputs, **quiet)
    for event in (panel.multiplier.blur, panel.multiplier.submit):
        event(_session(on_multiplier), inputs=[panel.state, prompt, panel.multiplier], outputs=outputs, **quiet)

    lora_dropdowns = [r["lora"] for r in panel.rows]

    def on_choices(show_all: bool):
        names = services.lora_names(bool(show_all))
        return [gr.update(choices=names) for _ in panel.rows]

    extras["show_all"].input(on_choices, inputs=[extras["show_all"]], outputs=lora_dropdowns, **quiet)
    extras["refresh"].click(_session(on_sync), inputs=panel.sync_io[0], outputs=panel.sync_io[1], **quiet)  # type: ignore[attr-defined]

    def on_load(state_json: str, which: str | None):
        state = load(state_json)
        i = int(which) - 1 if which else 0
        family = services.family() or Family.SD1
        spec = state.rows[i].lbw if i < len(state.rows) else ""
        vector = resolve_block_weights(family, spec or None, presets=presets()).vector
        shown = _block_ids(family)
        return [gr.update(value=vector.get(b, 1.0), visible=b in shown) for b in ids]

    def on_write(state_json: str, text: str, which: str | None, *values):
        state = load(state_json)
        i = int(which) - 1 if which else 0
        family = services.family() or Family.SD1
        shown = _block_ids(family)
        vector = ",".join(format_number(round(float(v), 4)) for b, v in zip(ids, values) if b in shown)
        if i >= len(state.rows):
            return finish(state, text, [f"row {i + 1} does not exist"])
        state, text = edit_row(state, text, i, presets(), lbw=vector)
        return finish(state, text)

    extras["load"].click(_session(on_load), inputs=[panel.state, extras["block_row"]], outputs=sliders, **quiet)
    extras["write"].click(_session(on_write), inputs=[panel.state, prompt, extras["block_row"], *sliders], outputs=outputs, **quiet)

    if panel.preset_controls is not None:  # type: ignore[attr-defined]
        _wire_presets(panel, prompt, outputs, load, finish)
    if panel.doctor_controls is not None:  # type: ignore[attr-defined]
        _wire_doctor(panel, prompt, load)


def wire_job_end(panel: Panel, component) -> None:
    """When ``component`` (the tab's generation info, which the job's end fills) changes, the panel syncs: the
    summary's "Last job" line shows the job that just ran. Before ``wire`` the component is kept for it."""
    sync = getattr(panel, "sync", None)
    if sync is None:
        panel.job_end = [*getattr(panel, "job_end", []), component]  # type: ignore[attr-defined]
        return
    inputs, outputs = panel.sync_io  # type: ignore[attr-defined]
    seen: dict[str | None, object] = {}

    def on_job_end(info, *values):
        """gradio 4 fires an HTML's change on its own redraws too: only a new info (a job that ended) syncs."""
        key = getattr(_local, "key", None)
        if key in seen and seen[key] == info:
            return [gr.update()] * len(outputs)
        seen[key] = info
        return sync(*values)

    component.change(_session(on_job_end), inputs=[component, *inputs], outputs=outputs, **_events(panel))


def _wire_doctor(panel: Panel, prompt, load: Callable) -> None:
    from lib_lorastack.errors import LoraStackError

    actions: DoctorActions = panel.services.doctor  # type: ignore[attr-defined]
    c = panel.doctor_controls  # type: ignore[attr-defined]

    def report(fraction: Callable) -> Callable[[int, int, str], None]:
        return lambda done, total, what: fraction(done / max(1, total), desc=what)

    services: PanelServices = panel.services  # type: ignore[attr-defined]

    def expanded(text: str) -> tuple[str, str]:
        """The prompt as the job sees it (``<lorastack:…>`` expanded) and the expansion's messages as lines."""
        job_text, notes = services.expand(text or "")
        return job_text, "".join(f"{n}\n" for n in notes)

    def run(state_json: str, text: str, with_base: bool, progress=gr.Progress()):  # noqa: B008 - gradio's idiom
        job_text, notes = expanded(text)
        try:
            body, png = actions.run(load(state_json), job_text, bool(with_base), report(progress))
        except LoraStackError as e:
            return gr.update(value=None), f"{notes}The doctor could not run: {e}"
        return png, notes + body

    def bake(state_json: str, text: str, name: str, progress=gr.Progress()):  # noqa: B008 - gradio's idiom
        job_text, notes = expanded(text)
        try:
            return notes + actions.bake(load(state_json), job_text, name or "", report(progress))
        except LoraStackError as e:
            return f"{notes}Not baked: {e}"

    c["run"].click(run, inputs=[panel.state, prompt, c["base"]], outputs=[c["image"], c["report"]])
    c["bake"].click(bake, inputs=[panel.state, prompt, c["name"]], outputs=[c["report"]])


def _wire_presets(panel: Panel, prompt, outputs: list, load: Callable, finish: Callable) -> None:
    from lib_lorastack.errors import LoraStackError

    actions: PresetActions = panel.services.presets  # type: ignore[attr-defined]
    c = panel.preset_controls  # type: ignore[attr-defined]
    quiet = _events(panel)
    with_choice = [*outputs, c["choice"]]

    def choices(selected: str | None = None):
        names = actions.names()
        return gr.update(choices=names, value=selected if selected in names else None)

    def act(fn: Callable) -> Callable:
        def handler(state_json: str, text: str, choice: str, name: str, triggers: str, confirm: bool):
            state, text = load(state_json), text or ""
            try:
                result = fn(state, text, choice, (name or "").strip(), triggers or "", confirm)
            except LoraStackError as e:
                return [*finish(state, text, [f"presets: {e}"]), gr.update()]
            if len(result) == 4:  # the action changed the prompt too
                state, text, notes, selected = result
            else:
                state, notes, selected = result
            return [*finish(state, text, notes), choices(selected)]

        return handler

    def loaded(append: bool):
        def fn(state, text, choice, _name, _triggers, _confirm):
            if not choice:
                return state, ["presets: choose a preset first"], choice
            rows, notes = actions.rows_of(choice)
            # the preset's own tag would stack the same LoRAs a second time: the rows take its place
            text, removed = remove_preset_tags(text, choice)
            if removed:
                notes.append(f"preset {choice!r}: its <lorastack:{choice}> tag was taken out of the prompt, so that its LoRAs apply once (from the rows)")
            kept = [r for r in state.rows if r.in_prompt or append]
            room = len(panel.rows) - len(kept)
            if len(rows) > room:
                notes.append(f"preset {choice!r}: {len(rows) - room} of its LoRAs do not fit in the panel's rows")
            return PanelState((*kept, *rows[: max(0, room)]), state.multiplier, state.mode), text, notes, choice

        return fn

    def save(overwrite_selected: bool):
        def fn(state, text, choice, name, triggers, _confirm):
            target = choice if overwrite_selected else name
            if not target:
                return state, ["presets: give a name" if not overwrite_selected else "presets: choose a preset first"], choice
            notes = actions.save(target, state, text, triggers, overwrite=overwrite_selected)
            return state, [f"preset {target!r} saved", *notes], target

        return fn

    def rename(state, text, choice, name, _triggers, _confirm):
        if not (choice and name):
            return state, ["presets: choose a preset and give the new name"], choice
        actions.rename(choice, name)
        return state, [f"preset {choice!r} renamed to {name!r}"], name

    def duplicate(state, text, choice, name, _triggers, _confirm):
        if not (choice and name):
            return state, ["presets: choose a preset and give the copy's name"], choice
        actions.duplicate(choice, name)
        return state, [f"preset {choice!r} copied as {name!r}"], name

    def delete(state, text, choice, _name, _triggers, confirm):
        if not choice:
            return state, ["presets: choose a preset first"], choice
        if not confirm:
            return state, [f"presets: tick 'really delete' to delete {choice!r}"], choice
        actions.delete(choice)
        return state, [f"preset {choice!r} deleted"], None

    inputs = [panel.state, prompt, c["choice"], c["name"], c["triggers"], c["confirm"]]
    for key, fn in (("load", loaded(False)), ("append", loaded(True)), ("save", save(False)), ("update", save(True)),
                    ("rename", rename), ("duplicate", duplicate), ("delete", delete)):  # fmt: skip
        c[key].click(_session(act(fn)), inputs=inputs, outputs=with_choice, **quiet)
    c["refresh"].click(lambda choice: choices(choice), inputs=[c["choice"]], outputs=[c["choice"]], **quiet)

    def export(choice: str):
        names = [choice] if choice else actions.names()
        try:
            return gr.update(value=actions.export(names))
        except LoraStackError:
            return gr.update()

    c["export"].click(export, inputs=[c["choice"]], outputs=[c["file"]], **quiet)

    def import_file(state_json: str, text: str, upload):
        state = load(state_json)
        path = getattr(upload, "name", upload)
        if not path:
            return [*finish(state, text, ["presets: choose a file to import first"]), gr.update()]
        try:
            notes = actions.import_file(str(path))
        except LoraStackError as e:
            return [*finish(state, text, [f"presets: {e}"]), gr.update()]
        return [*finish(state, text, notes), choices()]

    c["import"].click(_session(import_file), inputs=[panel.state, prompt, c["file"]], outputs=with_choice, **quiet)


def rows_from_infotext(params: dict, stack_field: str, prompt_key: str = "Prompt") -> str:
    """The panel's state for pasted parameters: the LoRAs of the ``LoRA stack`` field that are not tags of the
    pasted prompt were panel rows."""
    from lib_lorastack.host.infotext import parse_stack_value
    from lib_lorastack.syntax import parse_prompt

    records, _problems = parse_stack_value(params.get(stack_field, ""))
    in_prompt = {e.name for e in parse_prompt(params.get(prompt_key, "") or "").entries}
    rows = tuple(
        Row(r.entry.name, r.entry.te, r.entry.unet, r.entry.te == r.entry.unet, r.entry.lbw or "", r.entry.start, r.entry.stop)
        for r in records
        if r.entry.name not in in_prompt
    )
    data = json.loads(PanelState(rows).to_json())
    data["at"] = time.time()  # a pasted state is newer than what the panel wrote before
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
