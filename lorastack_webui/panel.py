"""The "LoRA Stack" panel (gradio 3.41): rows of LoRAs with strengths, block weights and schedules, kept in sync
with the prompt's tags. Imports gradio and lib_lorastack only; what it needs from the WebUI (the LoRA index, the
model's family, the accordion component) comes in through ``PanelServices``, so the same panel runs in a plain
gradio app for the browser tests.

Every event goes through the host-free model (``lib_lorastack.host.panel``) and returns the whole panel: the state
(one hidden JSON textbox, which is also the script's argument and the API's), the prompt, every row and the summary.
Row controls listen to ``input`` (the user's own changes), the prompt to ``change``, so an update never loops.
"""

from __future__ import annotations

import html
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
    move_row,
    parse_state,
    remove_row,
    set_in_prompt,
    summary,
    sync_with_prompt,
)
from lib_lorastack.syntax.blocks import FULL_LAYOUT
from lib_lorastack.syntax.format import format_number
from lib_lorastack.syntax.lbw import DEFAULT_PRESETS, resolve_block_weights, spec_fault
from lib_lorastack.syntax.rewrite import add_words, has_words, remove_words


@dataclass
class PanelServices:
    """What the panel needs from its host."""

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


ROW_CONTROLS = ("group", "enabled", "lora", "te", "unet", "linked", "in_prompt", "preset", "lbw", "start", "stop")


@dataclass
class Panel:
    enabled: gr.components.Component
    state: gr.Textbox
    rows: list[dict] = field(default_factory=list)
    summary: gr.HTML | None = None
    multiplier: gr.Slider | None = None
    wired: set = field(default_factory=set)

    def row_outputs(self) -> list:
        return [r[name] for r in self.rows for name in ROW_CONTROLS]


def build_panel(services: PanelServices, tab: str) -> Panel:
    """Create the panel's components (inside the caller's Blocks). ``tab``: "txt2img" or "img2img"."""
    presets = {**DEFAULT_PRESETS, **services.block_presets()}
    names = services.lora_names(False)
    rows = []
    prefix = f"lorastack_{tab}"
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
        with gr.Row(elem_id=f"{prefix}_toolbar"):
            multiplier = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="All strengths ×", elem_id=f"{prefix}_multiplier", scale=3)
            add = gr.Button("Add row", elem_id=f"{prefix}_add", scale=1)
            clear = gr.Button("Clear panel rows", elem_id=f"{prefix}_clear", scale=1)
            show_all = gr.Checkbox(False, label="Show LoRAs of every base model", elem_id=f"{prefix}_show_all", scale=2)
            refresh = gr.Button("🔄", elem_id=f"{prefix}_refresh", scale=0, min_width=40)
        for i in range(services.max_rows):
            r: dict = {}
            with gr.Group(visible=False, elem_id=f"{prefix}_row{i}", elem_classes=["lorastack-row"]) as r["group"]:
                with gr.Row():
                    r["enabled"] = gr.Checkbox(True, label="on", elem_id=f"{prefix}_row{i}_enabled", scale=0, min_width=60)
                    r["lora"] = gr.Dropdown(names, value=None, label=f"LoRA {i + 1}", allow_custom_value=True, elem_id=f"{prefix}_row{i}_lora", scale=3, min_width=140)
                    r["te"] = gr.Slider(-2.0, 3.0, value=1.0, step=0.05, label="TE", elem_id=f"{prefix}_row{i}_te", scale=2, min_width=110)
                    r["unet"] = gr.Slider(-2.0, 3.0, value=1.0, step=0.05, label="UNet", elem_id=f"{prefix}_row{i}_unet", scale=2, min_width=110)
                    r["linked"] = gr.Checkbox(True, label="🔗", elem_id=f"{prefix}_row{i}_linked", scale=0, min_width=60)
                    r["in_prompt"] = gr.Checkbox(False, label="in prompt", elem_id=f"{prefix}_row{i}_in_prompt", scale=0, min_width=100)
                    r["triggers"] = gr.Button("🏷", elem_id=f"{prefix}_row{i}_triggers", scale=0, min_width=40)
                    r["up"] = gr.Button("↑", elem_id=f"{prefix}_row{i}_up", scale=0, min_width=40)
                    r["down"] = gr.Button("↓", elem_id=f"{prefix}_row{i}_down", scale=0, min_width=40)
                    r["remove"] = gr.Button("✖", elem_id=f"{prefix}_row{i}_remove", scale=0, min_width=40)
                with gr.Row():
                    r["preset"] = gr.Dropdown(["", *presets], value="", label="Block preset", elem_id=f"{prefix}_row{i}_preset", scale=1, min_width=100)
                    r["lbw"] = gr.Textbox("", label="Block weights (preset or vector)", elem_id=f"{prefix}_row{i}_lbw", scale=3, min_width=140)
                    r["start"] = gr.Number(None, label="start", precision=0, elem_id=f"{prefix}_row{i}_start", scale=1, min_width=60)
                    r["stop"] = gr.Number(None, label="stop", precision=0, elem_id=f"{prefix}_row{i}_stop", scale=1, min_width=60)
            rows.append(r)
        with gr.Accordion("Block weights editor", open=False, elem_id=f"{prefix}_blocks"):
            with gr.Row():
                block_row = gr.Dropdown([str(i + 1) for i in range(services.max_rows)], value="1", label="Row", elem_id=f"{prefix}_block_row", scale=1)
                load = gr.Button("Read the row's blocks", elem_id=f"{prefix}_block_load", scale=1)
                write = gr.Button("Write to the row", elem_id=f"{prefix}_block_write", scale=1)
            block_ids = _block_ids(services.family())
            sliders = []
            with gr.Row():
                for b in FULL_LAYOUT[Family.SD1]:
                    sliders.append(gr.Slider(-1.0, 2.0, value=1.0, step=0.05, label=b, visible=b in block_ids, elem_id=f"{prefix}_block_{b}", min_width=90))
        preset_controls = _preset_controls(services, prefix) if services.presets is not None else None
        doctor_controls = _doctor_controls(prefix) if services.doctor is not None else None
        panel_summary = gr.HTML(_html(summary(PanelState(), "")), elem_id=f"{prefix}_summary")
    panel = Panel(enabled, state, rows, panel_summary, multiplier)
    panel.preset_controls = preset_controls  # type: ignore[attr-defined]
    panel.doctor_controls = doctor_controls  # type: ignore[attr-defined]
    panel.extras = dict(add=add, clear=clear, show_all=show_all, refresh=refresh, block_row=block_row, load=load, write=write, sliders=sliders)  # type: ignore[attr-defined]
    panel.services = services  # type: ignore[attr-defined]
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


def _block_ids(family: Family | None) -> tuple[str, ...]:
    return tuple(FULL_LAYOUT[family or Family.SD1])


def _html(lines: list[str]) -> str:
    return "<div class='lorastack-summary'>" + "<br>".join(html.escape(line) for line in lines) + "</div>"


def render(panel: Panel, state: PanelState) -> list:
    """Updates for every row control, from the state."""
    out = []
    for i, _r in enumerate(panel.rows):
        row = state.rows[i] if i < len(state.rows) else None
        if row is None:
            out += [gr.update(visible=False)] + [gr.update()] * (len(ROW_CONTROLS) - 1)
            continue
        presets = {**DEFAULT_PRESETS, **panel.services.block_presets()}  # type: ignore[attr-defined]
        out += [
            gr.update(visible=True),
            gr.update(value=row.enabled),
            gr.update(value=row.lora or None),
            gr.update(value=row.te),
            gr.update(value=row.unet),
            gr.update(value=row.linked),
            gr.update(value=row.in_prompt),
            gr.update(value=row.lbw if row.lbw in presets else ""),
            gr.update(value=row.lbw),
            gr.update(value=row.start),
            gr.update(value=row.stop),
        ]
    return out


def wire(panel: Panel, prompt: gr.Textbox) -> None:
    """Connect the panel to the tab's prompt textbox (once per panel)."""
    if id(prompt) in panel.wired:
        return
    panel.wired.add(id(prompt))
    services: PanelServices = panel.services  # type: ignore[attr-defined]
    presets = lambda: {**DEFAULT_PRESETS, **services.block_presets()}  # noqa: E731
    rows_out = panel.row_outputs()
    outputs = [panel.state, prompt, *rows_out, panel.summary]

    def finish(state: PanelState, text: str, notes: list[str] | None = None) -> list:
        lines = summary(state, text, known=services.lora_names(True), wrong_family=services.wrong_family([r.lora for r in state.rows if r.lora]))
        lines += notes or []
        last = services.last_job()
        if last:
            lines.append(f"Last job: {last}")
        return [state.to_json(), text, *render(panel, state), _html(lines)]

    def load(state_json: str) -> PanelState:
        return parse_state(state_json, presets()).state

    def on_prompt(state_json: str, text: str) -> list:
        state = sync_with_prompt(load(state_json), text or "", presets())
        result = finish(state, text or "")
        return [result[0], *result[2:]]  # not the prompt itself: it is what changed

    # gradio 3.41 drops a trigger while the same event is still running, so fast typing can leave the rows one
    # keystroke behind: leaving the prompt box (blur) syncs again with its final text.
    for event in (prompt.change, prompt.blur):
        event(on_prompt, inputs=[panel.state, prompt], outputs=[panel.state, *rows_out, panel.summary], show_progress=False)

    def edit(i: int, name: str) -> Callable:
        def handler(state_json: str, text: str, value):
            state = load(state_json)
            if i >= len(state.rows):
                return finish(state, text)
            notes: list[str] = []
            changes: dict = {}
            if name in ("te", "unet"):
                changes[name] = float(value)
            elif name in ("start", "stop"):
                changes[name] = None if value in (None, "") else max(0, int(value))
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
            # sliders report on release (gradio 3.41 drops an event's triggers while it runs: typing "0.5" would
            # otherwise stop at "0"); the others on each user input
            events = [r[name].release] if name in ("te", "unet") else [r[name].input]
            if name == "lbw":
                events.append(r[name].blur)  # validated as you type; the final text counts when the box is left
            for event in events:
                event(edit(i, name), inputs=[panel.state, prompt, r[name]], outputs=outputs, show_progress=False)

        def button(i: int, action: str) -> Callable:
            def handler(state_json: str, text: str):
                state = load(state_json)
                if i >= len(state.rows):
                    return finish(state, text)
                if action == "up":
                    state = move_row(state, i, -1)
                elif action == "down":
                    state = move_row(state, i, 1)
                elif action == "remove":
                    state, text = remove_row(state, text, i)
                elif action == "triggers":
                    _weight, words = services.lora_defaults(state.rows[i].lora)
                    if not words:
                        return finish(state, text, [f"row {i + 1}: {state.rows[i].lora or 'no LoRA'} has no trigger words"])
                    text = (remove_words(text, words) if has_words(text, words) else add_words(text, words)).text
                return finish(state, text)

            return handler

        for action in ("up", "down", "remove", "triggers"):
            r[action].click(button(i, action), inputs=[panel.state, prompt], outputs=outputs, show_progress=False)

    extras = panel.extras  # type: ignore[attr-defined]

    def on_add(state_json: str, text: str):
        return finish(add_row(load(state_json), limit=min(MAX_ROWS, len(panel.rows))), text)

    def on_clear(state_json: str, text: str):
        state = load(state_json)
        return finish(PanelState(tuple(r for r in state.rows if r.in_prompt), state.multiplier, state.mode), text)

    def on_multiplier(state_json: str, text: str, value):
        state = load(state_json)
        return finish(PanelState(state.rows, float(value), state.mode), text)

    extras["add"].click(on_add, inputs=[panel.state, prompt], outputs=outputs, show_progress=False)
    extras["clear"].click(on_clear, inputs=[panel.state, prompt], outputs=outputs, show_progress=False)
    panel.multiplier.release(on_multiplier, inputs=[panel.state, prompt, panel.multiplier], outputs=outputs, show_progress=False)

    def on_choices(show_all: bool):
        names = services.lora_names(bool(show_all))
        return [gr.update(choices=names) for _ in panel.rows]

    lora_dropdowns = [r["lora"] for r in panel.rows]
    extras["show_all"].input(on_choices, inputs=[extras["show_all"]], outputs=lora_dropdowns, show_progress=False)
    extras["refresh"].click(on_choices, inputs=[extras["show_all"]], outputs=lora_dropdowns, show_progress=False)

    sliders = extras["sliders"]
    ids = list(FULL_LAYOUT[Family.SD1])

    def on_load(state_json: str, which: str):
        state = load(state_json)
        i = int(which) - 1
        family = services.family() or Family.SD1
        spec = state.rows[i].lbw if i < len(state.rows) else ""
        vector = resolve_block_weights(family, spec or None, presets=presets()).vector
        shown = _block_ids(family)
        return [gr.update(value=vector.get(b, 1.0), visible=b in shown) for b in ids]

    def on_write(state_json: str, text: str, which: str, *values):
        state = load(state_json)
        i = int(which) - 1
        family = services.family() or Family.SD1
        shown = _block_ids(family)
        vector = ",".join(format_number(round(float(v), 4)) for b, v in zip(ids, values) if b in shown)
        if i >= len(state.rows):
            return finish(state, text, [f"row {i + 1} does not exist"])
        state, text = edit_row(state, text, i, presets(), lbw=vector)
        return finish(state, text)

    extras["load"].click(on_load, inputs=[panel.state, extras["block_row"]], outputs=sliders, show_progress=False)
    extras["write"].click(on_write, inputs=[panel.state, prompt, extras["block_row"], *sliders], outputs=outputs, show_progress=False)

    if panel.preset_controls is not None:  # type: ignore[attr-defined]
        _wire_presets(panel, prompt, outputs, load, finish)
    if panel.doctor_controls is not None:  # type: ignore[attr-defined]
        _wire_doctor(panel, prompt, load)


def _wire_doctor(panel: Panel, prompt, load: Callable) -> None:
    from lib_lorastack.errors import LoraStackError

    actions: DoctorActions = panel.services.doctor  # type: ignore[attr-defined]
    c = panel.doctor_controls  # type: ignore[attr-defined]

    def report(fraction: Callable) -> Callable[[int, int, str], None]:
        return lambda done, total, what: fraction(done / max(1, total), desc=what)

    def run(state_json: str, text: str, with_base: bool, progress=gr.Progress()):  # noqa: B008 - gradio's idiom
        try:
            body, png = actions.run(load(state_json), text or "", bool(with_base), report(progress))
        except LoraStackError as e:
            return gr.update(value=None), f"The doctor could not run: {e}"
        return png, body

    def bake(state_json: str, text: str, name: str, progress=gr.Progress()):  # noqa: B008 - gradio's idiom
        try:
            return actions.bake(load(state_json), text or "", name or "", report(progress))
        except LoraStackError as e:
            return f"Not baked: {e}"

    c["run"].click(run, inputs=[panel.state, prompt, c["base"]], outputs=[c["image"], c["report"]])
    c["bake"].click(bake, inputs=[panel.state, prompt, c["name"]], outputs=[c["report"]])


def _wire_presets(panel: Panel, prompt, outputs: list, load: Callable, finish: Callable) -> None:
    from lib_lorastack.errors import LoraStackError

    actions: PresetActions = panel.services.presets  # type: ignore[attr-defined]
    c = panel.preset_controls  # type: ignore[attr-defined]
    with_choice = [*outputs, c["choice"]]

    def choices(selected: str | None = None):
        names = actions.names()
        return gr.update(choices=names, value=selected if selected in names else None)

    def act(fn: Callable) -> Callable:
        def handler(state_json: str, text: str, choice: str, name: str, triggers: str, confirm: bool):
            state = load(state_json)
            try:
                state, notes, selected = fn(state, text or "", choice, (name or "").strip(), triggers or "", confirm)
            except LoraStackError as e:
                return [*finish(state, text, [f"presets: {e}"]), gr.update()]
            return [*finish(state, text, notes), choices(selected)]

        return handler

    def loaded(append: bool):
        def fn(state, text, choice, _name, _triggers, _confirm):
            if not choice:
                return state, ["presets: choose a preset first"], choice
            rows, notes = actions.rows_of(choice)
            kept = [r for r in state.rows if r.in_prompt or append]
            room = len(panel.rows) - len(kept)
            if len(rows) > room:
                notes.append(f"preset {choice!r}: {len(rows) - room} of its LoRAs do not fit in the panel's rows")
            return PanelState((*kept, *rows[: max(0, room)]), state.multiplier, state.mode), notes, choice

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
        c[key].click(act(fn), inputs=inputs, outputs=with_choice, show_progress=False)
    c["refresh"].click(lambda choice: choices(choice), inputs=[c["choice"]], outputs=[c["choice"]], show_progress=False)

    def export(choice: str):
        names = [choice] if choice else actions.names()
        try:
            return gr.update(value=actions.export(names))
        except LoraStackError:
            return gr.update()

    c["export"].click(export, inputs=[c["choice"]], outputs=[c["file"]], show_progress=False)

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

    c["import"].click(import_file, inputs=[panel.state, prompt, c["file"]], outputs=with_choice, show_progress=False)


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
    return PanelState(rows).to_json()
