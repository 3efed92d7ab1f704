"""The stand-in Forge (tests/forge_stub) or Forge Neo (tests/neo_stub) with its built-in LoRA and our script loaded
from its file, over the A1111 stand-in's common ``modules``: a small SD1 model built by the host's loader from
checkpoints in Forge's names, and the LoRA folder of the A1111 tests."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

from tests.helpers.host_fixtures import lora_folder
from tests.helpers.webui import fake_model

ROOT = Path(__file__).resolve().parents[2]
STUBS = {"forge": ROOT / "tests" / "forge_stub", "neo": ROOT / "tests" / "neo_stub"}
WEBUI_STUB = ROOT / "tests" / "webui_stub"
_STUB_MODULES = ("modules", "backend", "gradio", "networks", "extra_networks_lora", "lora_script.py", "lorastack.py", "lorastack_webui")


def _purge() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in _STUB_MODULES:
            del sys.modules[name]


def forge_checkpoint(seed: int, *, sd3: bool = False) -> dict[str, torch.Tensor]:
    """A checkpoint in Forge's patch-key names (``diffusion_model.…``, ``clip_l.…``)."""
    model = fake_model(seed)
    out = {}
    for name, t in model.state_dict().items():
        name = name.replace(".wrapped", "")
        if name.startswith("model.diffusion_model."):
            out[name[len("model."):]] = t.clone()
        elif name.startswith("cond_stage_model."):
            out["clip_l." + name[len("cond_stage_model."):]] = t.clone()
    if sd3:
        out["diffusion_model.sd3.marker.weight"] = torch.ones(1)
    return out


class ForgeUI:
    """``txt2img(prompt, …)`` runs a job; ``switch(ckpt)`` selects another checkpoint (loaded by the next job)."""

    def __init__(self, tmp: Path, host: str = "forge", with_builtin: bool = True) -> None:
        _purge()
        stub = STUBS[host]
        self._path = list(sys.path)
        sys.path[:0] = [str(stub), str(WEBUI_STUB), str(stub / "builtin_lora")]
        self.loras = lora_folder(tmp)
        self.shared = importlib.import_module("modules.shared")
        self.callbacks = importlib.import_module("modules.script_callbacks")
        self.sd_models = importlib.import_module("modules.sd_models")
        self.processing = importlib.import_module("modules.processing")
        self.memory = importlib.import_module("backend.memory_management")
        scripts = importlib.import_module("modules.scripts")
        self.shared.cmd_opts.lora_dir = str(self.loras)
        self.networks = None
        self.processing.StableDiffusionProcessing.cached_c = [None, None]
        _module, classes = scripts.load_script_file(str(ROOT / "scripts" / "lorastack.py"), str(ROOT))
        assert len(classes) == 1, classes
        if with_builtin:
            scripts.load_script_file(str(stub / "builtin_lora" / "scripts" / "lora_script.py"), str(stub / "builtin_lora"))
            self.networks = importlib.import_module("networks")
            self.networks.list_available_networks()
        self.callbacks.before_ui_callback()
        self.callbacks.ui_settings_callback()
        self.callbacks.app_started_callback(None, None)
        self.runner = scripts.ScriptRunner([c() for c in classes])
        CheckpointInfo = self.sd_models.CheckpointInfo
        self.base_ckpt = CheckpointInfo("base.safetensors", forge_checkpoint(0))
        self.other_ckpt = CheckpointInfo("other.safetensors", forge_checkpoint(1))
        self.sd3_ckpt = CheckpointInfo("sd3.safetensors", forge_checkpoint(0, sd3=True))
        self.switch(self.base_ckpt)
        self.sd_models.forge_model_reload()

    @property
    def model(self):
        return self.sd_models.model_data.sd_model

    def switch(self, ckpt) -> None:
        self.sd_models.model_data.forge_loading_parameters = {"checkpoint_info": ckpt}

    def set(self, key: str, value) -> None:
        self.shared.opts.set(key, value)

    def txt2img(self, prompt: str, **kwargs):
        p = self.processing.StableDiffusionProcessing(self.model, prompt, scripts=self.runner, **kwargs)
        processed = self.processing.process_images(p)
        return processed, p

    def host(self):
        return importlib.import_module("lorastack_webui.host").host()

    def engine(self):
        return self.host().session.engine(self.model._lorastack_key)

    def close(self) -> None:
        self.callbacks.script_unloaded_callback()
        _purge()
        sys.path[:] = self._path
