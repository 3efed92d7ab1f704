"""The LoRA Stack panel in a plain gradio app (3.41.2 as the WebUI pins it, or 4.40.0 as Forge and Forge Neo do): a
prompt textbox like the WebUI's, the same panel with the page's own style.css and javascript/, over a LoRA folder
made in code, and a Generate button that runs a real job (the stack session over a small WebUI-named model) and
fills the generation info as the WebUI does at the job's end."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from lib_lorastack.formats.hashes import HashCache
from lib_lorastack.formats.targets import Family
from lib_lorastack.host import preset_rows
from lib_lorastack.host.doctor_job import run_bake, run_doctor
from lib_lorastack.host.library import lora_defaults
from lib_lorastack.host.panel import last_job_line, panel_tags, parse_state
from lib_lorastack.presets.expand import expand_prompt
from lib_lorastack.presets.resolve import LoraResolver
from lib_lorastack.presets.store import PresetStore
from lib_lorastack.stack import LoraCatalog
from lib_lorastack.syntax.tags import TAG_RE
from lorastack_webui.panel import GRADIO_4, DoctorActions, PanelServices, PresetActions, build_panel, wire, wire_job_end
from tests.helpers.host_fixtures import make_session, model_handle

ROOT = Path(__file__).resolve().parents[2]


def page_assets() -> tuple[str, str]:
    """The extension's style.css and javascript/*.js, as the WebUI serves them with every page."""
    css = (ROOT / "style.css").read_text(encoding="utf-8")
    js = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "javascript").glob("*.js")))
    return css, js


def make_app(lora_dir: Path, prompt: str = "", presets_file: Path | None = None) -> gr.Blocks:
    catalog = LoraCatalog(lora_dir)
    store = PresetStore(presets_file or lora_dir.parent / "presets.json")
    resolver = LoraResolver(catalog, HashCache())
    session, _options = make_session(lora_dir)
    _model, handle = model_handle()
    last = {"job": ""}
    actions = PresetActions(
        names=lambda: preset_rows.preset_names(store),
        rows_of=lambda n: preset_rows.rows_of(store, n, resolver, "sd1"),
        save=lambda name, state, text, triggers, overwrite: preset_rows.save_rows(
            store, name, state, text, triggers, overwrite=overwrite, resolver=resolver, family="sd1"),
        delete=store.delete,
        rename=store.rename,
        duplicate=lambda a, b: preset_rows.duplicate(store, a, b),
        export=lambda names: preset_rows.export_file(store, names),
        import_file=lambda path: preset_rows.import_file(store, path),
    )

    def names(show_all: bool) -> list[str]:
        return sorted({e.alias for e in catalog.entries.values()}, key=str.lower)

    def defaults(name: str):
        entry = catalog.find(name) if name else None
        return (None, "") if entry is None else lora_defaults(entry.path, entry.metadata)

    def expand(text: str) -> tuple[str, list[str]]:
        ex = expand_prompt(text, presets=store.load(), resolver=resolver, family="sd1")
        return ex.prompt, [d.message for d in ex.diagnostics]

    def generate(enabled: bool, state_json: str, text: str) -> str:
        """A job as the WebUI runs it: presets expanded, the prompt's tags (split as the WebUI splits them), then
        the panel's rows when the panel is on, in one activation."""
        job_text, _notes = expand(text or "")
        parsed = parse_state(state_json)
        tags = [m.group(2).split(":") for m in TAG_RE.finditer(job_text) if m.group(1) in ("lora", "lyco")]
        if enabled:
            tags += panel_tags(parsed.state, job_text)[0]
        activation = session.activate(handle, tags, multiplier=parsed.state.multiplier if enabled else 1.0)
        last["job"] = last_job_line(activation)
        return f"<p>{len(activation.uses)} LoRA(s) applied; {text}</p>"

    services = PanelServices(lora_names=names, lora_defaults=defaults, family=lambda: Family.SD1, max_rows=4,
                             last_job=lambda: last["job"], presets=actions, expand=expand, doctor=DoctorActions(
                                 run=lambda state, text, with_base, progress: run_doctor(state, text, catalog, Family.SD1, progress=progress),
                                 bake=lambda state, text, name, progress: run_bake(state, text, catalog, Family.SD1, lora_dir, name, progress=progress)))
    css, js = page_assets()
    blocks = {"title": "LoRA Stack panel", "css": css}
    if GRADIO_4:
        blocks["head"] = f"<script>{js}</script>"
    with gr.Blocks(**blocks) as demo:
        text = gr.Textbox(prompt, label="Prompt", elem_id="txt2img_prompt", lines=3)
        with gr.Row():
            with gr.Column(scale=1, min_width=560):  # the WebUI's settings column
                panel = build_panel(services, "txt2img")
            with gr.Column(scale=1):
                button = gr.Button("Generate", elem_id="txt2img_generate")
                info = gr.HTML("", elem_id="html_info_txt2img")
        wire(panel, text)
        wire_job_end(panel, info)
        button.click(generate, inputs=[panel.enabled, panel.state, text], outputs=[info])
        if not GRADIO_4:
            demo.load(None, None, None, _js=f"() => {{ {js} }}")
    return demo
