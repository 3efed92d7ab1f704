"""The WebUI side of the host interface: settings, the LoRA index, hashes, models and where messages go."""

from __future__ import annotations

import os

import torch
from modules import shared

from lib_lorastack.formats.targets import Family
from lib_lorastack.host import ModelHandle, StackOptions, StackSession, read_options
from lib_lorastack.stack import LoraCatalog
from lib_lorastack.syntax.lbw import read_presets

from . import builtin, hosts
from .catalog import BuiltinCatalog, Hashes, own_catalog

PREFIX = "[LoRA Stack]"


def log(text: str) -> None:
    print(text if text.startswith(PREFIX) else f"{PREFIX} {text}", flush=True)


def family_of(sd_model) -> Family | None:
    adapter = hosts.adapter()
    return None if adapter is None or sd_model is None else adapter.family_of(sd_model)


class WebUIHost:
    def __init__(self) -> None:
        from modules import paths

        self.adapter = hosts.adapter()
        kind = self.adapter.hash_kind if self.adapter is not None else "addnet"
        self.hashes = Hashes(os.path.join(paths.data_path, "cache", "lorastack-hashes.json"), kind)
        self._own: LoraCatalog | None = None
        self._reported: set[str] = set()
        self._lbw: tuple[float, dict] | None = None
        self.builtin_epoch = 0  # counts the times the takeover was turned off (the built-in may patch again)
        self.last_job = ""  # what the last activation applied, for the panel's summary
        self.prompts: dict[str, object] = {}  # "txt2img"/"img2img" → the prompt textbox (for the panel)
        self.session = StackSession(catalog=self.catalog, options=self.options, short_hash=self.hashes.short, block_presets=self.lbw_presets)

    # ----------------------------------------------------------------- settings
    def options(self) -> StackOptions:
        options, problems = read_options(shared.opts.data.get)
        for p in problems:
            if p not in self._reported:
                self._reported.add(p)
                log(p)
        return options

    # ----------------------------------------------------------------- LoRA index
    def catalog(self) -> LoraCatalog:
        if builtin.networks() is not None:
            return BuiltinCatalog()
        if self._own is None:
            from modules import paths

            self._own = own_catalog(shared.cmd_opts, paths.models_path)
        return self._own

    def local_name(self, short: str) -> str | None:
        preferred = shared.opts.data.get("lora_preferred_name", "Alias from file")
        return self.hashes.local_name(short, self.catalog(), preferred)

    def lbw_presets(self) -> dict[str, str]:
        """The user's lora-block-weight presets, when that extension is installed (read again when changed)."""
        from modules import paths

        for folder in ("sd-webui-lora-block-weight", "sd-webui-lora-block-weight-main"):
            path = os.path.join(paths.extensions_dir, folder, "scripts", "lbwpresets.txt")
            if os.path.isfile(path):
                mtime = os.path.getmtime(path)
                if self._lbw is None or self._lbw[0] != mtime:
                    try:
                        with open(path, encoding="utf-8") as f:
                            self._lbw = (mtime, read_presets(f.read()))
                    except (OSError, UnicodeDecodeError) as e:
                        log(f"could not read {path}: {e}")
                        self._lbw = (mtime, {})
                return self._lbw[1]
        return {}

    # ----------------------------------------------------------------- models
    def model_handle(self, sd_model) -> ModelHandle | None:
        family = family_of(sd_model)
        if family is None:
            return None
        key = getattr(sd_model, "_lorastack_key", None)
        if key is None:
            key = self.new_key(sd_model)
        modules = getattr(sd_model, "_lorastack_modules", None)
        if modules is None or modules[0] is not key:
            modules = (key, *self.adapter.modules(sd_model, family))
            sd_model._lorastack_modules = modules
        info = getattr(sd_model, "sd_checkpoint_info", None)
        return ModelHandle(key, family, modules[1], getattr(info, "title", "") or "", translate=modules[2])

    @staticmethod
    def new_key(sd_model) -> object:
        """A model whose weights were (re)loaded is a new model for the session."""
        key = object()
        sd_model._lorastack_key = key
        sd_model._lorastack_modules = None
        return key

    def release(self, sd_model, *, restore: bool) -> None:
        key = getattr(sd_model, "_lorastack_key", None)
        if key is not None:
            with torch.no_grad():
                report = self.session.release(key, restore=restore)
            if report is not None and report.layers_restored:
                log(f"restored {report.layers_restored} weights before the model's weights change")

    def builtin_off(self, sd_model) -> None:
        """Before we patch a model: nothing of the built-in's may stay merged into it. Checked once per model and
        per period in which the built-in could patch (each time the takeover was off)."""
        mark = (getattr(sd_model, "_lorastack_key", None), self.builtin_epoch)
        if getattr(sd_model, "_lorastack_builtin_clean", None) == mark:
            return
        restored = self.adapter.restore_builtin(sd_model)
        if restored:
            log(f"restored {restored} layers the built-in Lora extension had patched")
        sd_model._lorastack_builtin_clean = mark


_host: WebUIHost | None = None


def host() -> WebUIHost:
    global _host
    if _host is None:
        _host = WebUIHost()
    return _host
