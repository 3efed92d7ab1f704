"""The stand-in WebUI (tests/webui_stub) with the built-in Lora stand-in and our script loaded from its file, a
small WebUI-named SD1 model, two checkpoints, and a LoRA folder."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lib_lorastack.formats.targets import Family
from lib_lorastack.tools.skeleton import build_skeleton
from tests.helpers.engine_fixtures import SD1_SUBSET
from tests.helpers.host_fixtures import lora_folder

ROOT = Path(__file__).resolve().parents[2]
STUB = ROOT / "tests" / "webui_stub"
_STUB_MODULES = ("modules", "gradio", "networks", "extra_networks_lora", "lora_script.py", "lorastack.py", "lorastack_webui")


def _purge() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in _STUB_MODULES:
            del sys.modules[name]


class _Wrapper(nn.Module):
    """The WebUI's text-encoder hijack: the encoder moves one level down, under ``.wrapped``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.wrapped = inner


def fake_model(seed: int = 0) -> nn.Module:
    model = build_skeleton(Family.SD1, select=lambda n: any(s in n for s in SD1_SUBSET), seed=seed)
    model.cond_stage_model = _Wrapper(model.cond_stage_model)
    model.is_sd1, model.is_sd2, model.is_sdxl = True, False, False
    return model


class WebUI:
    """``txt2img(prompt, …)`` runs a job; ``paste(infotext)`` returns the pasted parameters."""

    def __init__(self, tmp: Path, with_builtin: bool = True) -> None:
        _purge()
        self._path = list(sys.path)
        sys.path[:0] = [str(STUB), str(STUB / "builtin_lora")]
        self.loras = lora_folder(tmp)
        empty = self.loras / "zero.safetensors"
        save_file({}, str(empty))  # a file with no tensors: its "addnet" hash is the empty hash
        self.shared = importlib.import_module("modules.shared")
        self.callbacks = importlib.import_module("modules.script_callbacks")
        self.sd_models = importlib.import_module("modules.sd_models")
        self.processing = importlib.import_module("modules.processing")
        self.infotext_utils = importlib.import_module("modules.infotext_utils")
        scripts = importlib.import_module("modules.scripts")
        self.shared.cmd_opts.lora_dir = str(self.loras)
        self.networks = None
        # Our script loads first here: the real WebUI (v1.10.1, --data-dir) ran our before_ui before the built-in's,
        # so the built-in registers its handler after ours and we take over again once the app has started.
        _module, classes = scripts.load_script_file(str(ROOT / "scripts" / "lorastack.py"), str(ROOT))
        assert len(classes) == 1, classes
        if with_builtin:
            scripts.load_script_file(str(STUB / "builtin_lora" / "scripts" / "lora_script.py"), str(STUB / "builtin_lora"))
            self.networks = importlib.import_module("networks")
            self.networks.list_available_networks()
        self.callbacks.before_ui_callback()
        self.callbacks.ui_settings_callback()
        self.callbacks.app_started_callback(None, None)
        self.runner = scripts.ScriptRunner([c() for c in classes])
        self.model = fake_model(seed=0)
        self.base_ckpt = self.sd_models.CheckpointInfo("base.safetensors", {k: v.clone() for k, v in self.model.state_dict().items()})
        other = fake_model(seed=1)
        self.other_ckpt = self.sd_models.CheckpointInfo("other.safetensors", {k: v.clone() for k, v in other.state_dict().items()})
        self.model.sd_checkpoint_info = self.base_ckpt
        self.shared.sd_model = self.sd_models.model_data.sd_model = self.model
        self.callbacks.model_loaded_callback(self.model)

    def set(self, key: str, value) -> None:
        self.shared.opts.set(key, value)

    def txt2img(self, prompt: str, **kwargs):
        p = self.processing.StableDiffusionProcessing(self.shared.sd_model, prompt, scripts=self.runner, **kwargs)
        processed = self.processing.process_images(p)
        return processed, p

    def paste(self, infotext: str) -> dict:
        return self.infotext_utils.parse_generation_parameters(infotext)

    def engine(self):
        return self.host().session.engine(self.model._lorastack_key)

    def host(self):
        return importlib.import_module("lorastack_webui.host").host()

    def close(self) -> None:
        self.callbacks.script_unloaded_callback()
        _purge()
        sys.path[:] = self._path


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
