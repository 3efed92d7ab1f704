"""Callbacks by category, called in registration order (the WebUI registers built-in extensions first), kept as
the WebUI keeps them: ``callback_map["callbacks_<category>"]`` lists of ``ScriptCallback``."""

import dataclasses
from collections import defaultdict


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: object
    name: str = "unnamed"


callback_map: dict[str, list] = defaultdict(list)
ordered_callbacks_map: dict[str, list] = {}


def _on(category):
    def register(callback, *, name=None):
        callback_map["callbacks_" + category].append(ScriptCallback(getattr(callback, "__module__", "?"), callback, name or category))

    return register


on_before_ui = _on("before_ui")
on_ui_settings = _on("ui_settings")
on_model_loaded = _on("model_loaded")
on_cfg_denoiser = _on("cfg_denoiser")
on_infotext_pasted = _on("infotext_pasted")
on_script_unloaded = _on("script_unloaded")
on_app_started = _on("app_started")
on_after_component = _on("after_component")


def _call(category, *args):
    for c in list(callback_map["callbacks_" + category]):
        c.callback(*args)


def before_ui_callback():
    _call("before_ui")


def ui_settings_callback():
    _call("ui_settings")


def model_loaded_callback(sd_model):
    _call("model_loaded", sd_model)


def cfg_denoiser_callback(params):
    _call("cfg_denoiser", params)


def infotext_pasted_callback(infotext, params):
    _call("infotext_pasted", infotext, params)


def after_component_callback(component, **kwargs):
    for c in list(callback_map["callbacks_after_component"]):
        c.callback(component, **kwargs)


def app_started_callback(demo, app):
    _call("app_started", demo, app)


def script_unloaded_callback():
    _call("script_unloaded")


class CFGDenoiserParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x, self.sampling_step, self.total_sampling_steps = x, sampling_step, total_sampling_steps


def clear_callbacks():
    callback_map.clear()
