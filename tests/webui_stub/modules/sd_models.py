"""Loading weights into a model, reloading, discarding (as modules/sd_models.py; the real one also undoes and
redoes the text-encoder hijack and moves the model between devices around a reload)."""

import types

from modules import script_callbacks, shared


class CheckpointInfo:
    def __init__(self, title, state_dict):
        self.title, self.filename, self.state_dict = title, title, state_dict


model_data = types.SimpleNamespace(sd_model=None)


def load_model_weights(model, checkpoint_info, state_dict, timer):
    model.load_state_dict(state_dict if state_dict is not None else checkpoint_info.state_dict, strict=False)
    model.sd_checkpoint_info = checkpoint_info


def reload_model_weights(sd_model=None, info=None):
    sd_model = sd_model or model_data.sd_model
    if info is None or sd_model.sd_checkpoint_info is info:
        return sd_model
    load_model_weights(sd_model, info, None, None)
    script_callbacks.model_loaded_callback(sd_model)
    model_data.sd_model = shared.sd_model = sd_model
    return sd_model


def send_model_to_trash(m):
    m.to(device="meta")
