"""Stand-in for Neo's sd_forge_lora lora_script.py: registers the ``lora`` handler."""

import extra_networks_lora
import networks
from modules import extra_networks, script_callbacks


def before_ui():
    networks.extra_network_lora = extra_networks_lora.ExtraNetworkLora()
    extra_networks.register_extra_network(networks.extra_network_lora)


script_callbacks.on_before_ui(before_ui)
