"""Stand-in for the built-in's lora_script.py: registers the lora/lyco handler before the UI, and renames pasted
<lora:NAME: by the short hashes in "Lora hashes" (trusting any hash, the empty file's too, as the built-in does)."""

import re

import extra_networks_lora
import networks
from modules import extra_networks, script_callbacks


def before_ui():
    networks.extra_network_lora = extra_networks_lora.ExtraNetworkLora()
    extra_networks.register_extra_network(networks.extra_network_lora)
    extra_networks.register_extra_network_alias(networks.extra_network_lora, "lyco")


def infotext_pasted(infotext, d):
    hashes = d.get("Lora hashes")
    if not hashes:
        return
    table = dict(x.strip().split(":", 1) for x in hashes.split(",") if ":" in x)
    table = {k.strip(): v.strip() for k, v in table.items()}

    def rename(m):
        on_disk = networks.available_network_hash_lookup.get(table.get(m.group(1), ""))
        return m.group(0) if on_disk is None else f"<lora:{on_disk.get_alias()}:"

    d["Prompt"] = re.sub(r"<lora:([^:]+):", rename, d["Prompt"])


script_callbacks.on_before_ui(before_ui)
script_callbacks.on_infotext_pasted(infotext_pasted)
