"""LoRA Stack for the AUTOMATIC1111 WebUI: every <lora:…>/<lyco:…> tag through the lorastack engine.

Thin on purpose: the logic is in lib_lorastack (host-free) and lorastack_webui (the adapter).
"""

import torch
from modules import scripts

from lorastack_webui import install
from lorastack_webui.host import host
from lorastack_webui.install import take_over_tags

install()


class LoraStackScript(scripts.Script):
    def title(self):
        return "LoRA Stack"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return []

    def process(self, p, *args):
        """Our tag handler is in place (another extension may have registered its own since), and a job that skips
        extra networks does not run with the previous job's LoRAs merged in."""
        take_over_tags()
        if getattr(p, "disable_extra_networks", False) and host().options().takeover:
            with torch.no_grad():
                host().session.clear()
