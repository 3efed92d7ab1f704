"""The LoRA Stack panel in a plain gradio 3.41 app (the WebUI's gradio pin): a prompt textbox like the WebUI's and
the same panel, over a LoRA folder made in code."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from lib_lorastack.formats.hashes import HashCache
from lib_lorastack.formats.targets import Family
from lib_lorastack.host import preset_rows
from lib_lorastack.host.doctor_job import run_bake, run_doctor
from lib_lorastack.host.library import lora_defaults
from lib_lorastack.presets.resolve import LoraResolver
from lib_lorastack.presets.store import PresetStore
from lib_lorastack.stack import LoraCatalog
from lorastack_webui.panel import DoctorActions, PanelServices, PresetActions, build_panel, wire


def make_app(lora_dir: Path, prompt: str = "", presets_file: Path | None = None) -> gr.Blocks:
    catalog = LoraCatalog(lora_dir)
    store = PresetStore(presets_file or lora_dir.parent / "presets.json")
    resolver = LoraResolver(catalog, HashCache())
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

    services = PanelServices(lora_names=names, lora_defaults=defaults, family=lambda: Family.SD1, max_rows=4,
                             last_job=lambda: "", presets=actions, doctor=DoctorActions(
                                 run=lambda state, text, with_base, progress: run_doctor(state, text, catalog, Family.SD1, progress=progress),
                                 bake=lambda state, text, name, progress: run_bake(state, text, catalog, Family.SD1, lora_dir, name, progress=progress)))
    with gr.Blocks(title="LoRA Stack panel") as demo:
        text = gr.Textbox(prompt, label="Prompt", elem_id="txt2img_prompt", lines=3)
        panel = build_panel(services, "txt2img")
        wire(panel, text)
    return demo
