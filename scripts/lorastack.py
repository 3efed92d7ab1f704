"""LoRA Stack for the AUTOMATIC1111 WebUI, Forge and Forge Neo: every <lora:…>/<lyco:…> tag through the lorastack engine, and the
"LoRA Stack" panel under txt2img and img2img.

Thin on purpose: the logic is in lib_lorastack (host-free) and lorastack_webui (the
adapter, with one small module per host in lorastack_webui/hosts).
"""

import json

import torch
from modules import scripts

from lorastack_webui.hosts import adapter

if adapter() is not None:  # else one console line says which host this is, and the built-in keeps the tags
    from lorastack_webui.guard import hidden_panel_inputs, log_panel_fault
    from lorastack_webui.host import host
    from lorastack_webui.install import install, take_over_tags
    from lorastack_webui.job import panel_job
    from lorastack_webui.panel import build_panel, rows_from_infotext, wire
    from lorastack_webui.presets import expand_job_prompts
    from lorastack_webui.services import services
    from lorastack_webui.tags import forget_conditionings

    install()

    class LoraStackScript(scripts.Script):
        def title(self):
            return "LoRA Stack"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def ui(self, is_img2img):
            tab = "img2img" if is_img2img else "txt2img"
            try:
                panel = build_panel(services(), tab)
            except Exception:  # the tags, the API rows and the settings work without the panel
                log_panel_fault("build the panel")
                return hidden_panel_inputs()
            prompt = host().prompts.get(tab)
            if prompt is not None:
                try:
                    wire(panel, prompt)
                except Exception:
                    log_panel_fault("wire the panel to the prompt")
            self.infotext_fields = [
                (panel.enabled, lambda d: bool(json.loads(rows_from_infotext(d, "LoRA stack"))["rows"])),
                (panel.state, lambda d: rows_from_infotext(d, "LoRA stack")),
            ]
            self.paste_field_names = ["LoRA stack"]
            return [panel.enabled, panel.state]

        def before_process(self, p, *args):
            """``<lorastack:NAME>`` tags become the preset's LoRA tags before the job reads its prompts."""
            if host().options().takeover:
                p._lorastack_preset_messages = expand_job_prompts(p)

        def process(self, p, enabled=False, state=None, *args):
            """Our tag handler is in place (another extension may have registered its own since); the panel's rows
            join the job; a job that skips extra networks does not run with the previous job's LoRAs merged in."""
            take_over_tags()
            p._lorastack_panel = panel_job(p, enabled, state) if host().options().takeover else None
            if getattr(p, "disable_extra_networks", False) and host().options().takeover:
                with torch.no_grad():
                    restored = host().session.clear()
                if any(r.layers_restored for r in restored):
                    forget_conditionings(p)  # its prompt's key is the last LoRA job's: that conditioning had our patch
