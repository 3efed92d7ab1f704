"""Which host this is, by what its modules offer (lorastack_webui/hosts): A1111, Forge, Neo, or unknown — where
the script stands aside with one console line and registers nothing."""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from pathlib import Path

from tests.helpers.forge import ROOT, STUBS, WEBUI_STUB, _purge


def _fake_backend() -> types.ModuleType:
    backend = types.ModuleType("backend")
    backend.__spec__ = importlib.machinery.ModuleSpec("backend", None, is_package=True)
    backend.__path__ = []
    return backend


def test_each_stand_in_host_is_recognised(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STUB_DATA_PATH", str(tmp_path / "data"))
    path = list(sys.path)
    try:
        for expected, extra in (("a1111", []), ("forge", [STUBS["forge"]]), ("neo", [STUBS["neo"]])):
            _purge()
            sys.path[:] = [*map(str, extra), str(WEBUI_STUB), *path]
            hosts = importlib.import_module("lorastack_webui.hosts")
            assert hosts.probe()[0] == expected
        _purge()
        sys.path[:] = [str(WEBUI_STUB), *path]
        with monkeypatch.context() as m:  # a stray 'backend' package (another extension's) does not hide A1111
            m.setitem(sys.modules, "backend", _fake_backend())
            assert importlib.import_module("lorastack_webui.hosts").probe()[0] == "a1111"
    finally:
        _purge()
        sys.path[:] = path


def test_an_unknown_host_gets_one_line_and_the_extension_stands_aside(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("STUB_DATA_PATH", str(tmp_path / "data"))
    path = list(sys.path)
    _purge()
    sys.path[:0] = [str(WEBUI_STUB)]
    try:
        sd_models = importlib.import_module("modules.sd_models")
        monkeypatch.delattr(sd_models, "load_model_weights")  # neither A1111's loader nor Forge's reload
        monkeypatch.setitem(sys.modules, "backend", _fake_backend())
        scripts = importlib.import_module("modules.scripts")
        callbacks = importlib.import_module("modules.script_callbacks")
        extra_networks = importlib.import_module("modules.extra_networks")
        _module, classes = scripts.load_script_file(str(ROOT / "scripts" / "lorastack.py"), str(ROOT))
        assert classes == []
        out = capsys.readouterr().out
        assert out.count("[LoRA Stack]") == 1 and "unknown WebUI" in out and "built-in Lora extension handles the tags" in out
        callbacks.before_ui_callback()
        assert "lora" not in extra_networks.extra_network_registry  # nothing of ours registered
    finally:
        _purge()
        sys.path[:] = path
