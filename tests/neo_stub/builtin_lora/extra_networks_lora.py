import networks
from modules import extra_networks, shared


class ExtraNetworkLora(extra_networks.ExtraNetwork):
    def __init__(self):
        super().__init__("lora")

    def activate(self, p, params_list):
        names, te, unet = [], [], []
        for params in params_list:
            names.append(params.positional[0])
            t = float(params.positional[1]) if len(params.positional) > 1 else 1.0
            t = float(params.named.get("te", t))
            u = float(params.positional[2]) if len(params.positional) > 2 else t
            te.append(t)
            unet.append(float(params.named.get("unet", u)))
        networks.load_networks(names, te, unet)
        if shared.opts.data.get("lora_add_hashes_to_infotext", True) and networks.loaded_networks:
            p.extra_generation_params["Lora hashes"] = ", ".join(f"{n}: {e.shorthash}" for n, e in networks.loaded_networks)

    def deactivate(self, p):
        pass
