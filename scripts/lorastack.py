"""LoRA Stack for the AUTOMATIC1111 WebUI: every <lora:…>/<lyco:…> tag through the lorastack engine.

Thin on purpose: the logic is in lib_lorastack (host-free) and lorastack_webui (the adapter).
"""

import torch
from modules import scripts

from lorastack_webui import install
from lorastack_webui.host import host

install()


class LoraStackScript(scripts.Script):
    def title(self):
        return "LoRA Stack"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return []

    def process(self, p, *args):
        """A job that skips extra networks must not run with the previous job's LoRAs merged in."""
        if getattr(p, "disable_extra_networks", False) and host().options().takeover:
            with torch.no_grad():
                host().session.clear()
