"""Forge's modules/sd_models.py: the A1111 loaders are no-ops; forge_model_reload loads what the settings ask."""

import types

from modules import script_callbacks, shared


class CheckpointInfo:
    def __init__(self, title, state_dict):
        self.title, self.filename, self.state_dict = title, title, state_dict

    def calculate_shorthash(self):
        return self.title[:10]


class _ModelData:
    def __init__(self):
        self.sd_model = None
        self.forge_loading_parameters = {}
        self.forge_hash = ""

    def get_sd_model(self):
        return self.sd_model

    def set_sd_model(self, v):
        self.sd_model = v


model_data = _ModelData()
loads = types.SimpleNamespace(count=0)


def load_model_weights(model, checkpoint_info, state_dict, timer):
    pass


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    pass


def send_model_to_trash(m):
    pass


def unload_model_weights(sd_model=None, info=None):
    from backend import memory_management

    memory_management.unload_all_models()
    model_data.sd_model = shared.sd_model = None
    model_data.forge_hash = ""


def forge_model_reload():
    from backend import memory_management
    from backend.loader import forge_loader

    current_hash = str(model_data.forge_loading_parameters)
    if model_data.forge_hash == current_hash:
        return model_data.sd_model, False
    if model_data.sd_model is not None:
        model_data.sd_model = None
        memory_management.unload_all_models()
    info = model_data.forge_loading_parameters["checkpoint_info"]
    sd_model = forge_loader(info.state_dict)
    sd_model.sd_checkpoint_info = info
    sd_model.filename = info.filename
    sd_model.sd_model_hash = info.calculate_shorthash()
    model_data.set_sd_model(sd_model)
    shared.sd_model = sd_model
    loads.count += 1
    script_callbacks.model_loaded_callback(sd_model)
    model_data.forge_hash = current_hash
    return sd_model, True
