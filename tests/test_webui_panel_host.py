"""The panel in the stand-in WebUI (tests/webui_stub): every message reaches the console (issue 18, item 5), and
the UI is built without the model, its model-dependent parts filled once the model is there (item 6)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from tests.helpers.webui import WebUI


@pytest.fixture
def webui(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("STUB_DATA_PATH", str(tmp_path / "data"))
    ui = WebUI(tmp_path)
    yield ui
    ui.close()


def test_an_unknown_preset_reaches_the_console(webui: WebUI, capsys) -> None:
    _, p = webui.txt2img("a cat <lorastack:brnd> <lora:char:0.5>")
    out = capsys.readouterr().out
    assert "no preset named 'brnd'" in p.extra_generation_params["LoRA stack errors"]
    assert "[LoRA Stack]" in out and "no preset named 'brnd'" in out, out


def test_a_malformed_api_row_reaches_the_console(webui: WebUI, capsys) -> None:
    _, p = webui.txt2img("a cat", script_args=[True, [{"lora": "detail", "te": 1}, {"lora": "char", "te": "lots"}]])
    out = capsys.readouterr().out
    assert "row 2: te 'lots' is not a number" in p.extra_generation_params["LoRA stack errors"]
    assert "row 2: te 'lots' is not a number" in out, out
    webui.txt2img("a cat", script_args=[True, [{"lora": "detail", "te": 1}]])  # a clean job adds no such line
    assert "lots" not in capsys.readouterr().out


class _LoadingShared(type(sys)):
    """``modules.shared`` as in the WebUI: reading ``sd_model`` loads the model and waits for it."""

    @property
    def sd_model(self):
        raise AssertionError("the UI read shared.sd_model: it would wait for the model to load")

    @sd_model.setter
    def sd_model(self, value) -> None:
        pass


def test_the_ui_is_built_without_the_model_and_filled_when_it_is_there(webui: WebUI, monkeypatch) -> None:
    from safetensors.torch import load_file, save_file

    xl = load_file(str(webui.loras / "xl_only.safetensors"))
    save_file(xl, str(webui.loras / "xl_tagged.safetensors"), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    webui.networks.list_available_networks()
    shared, sd_models = webui.shared, webui.sd_models
    model = sd_models.model_data.sd_model
    monkeypatch.setattr(sd_models.model_data, "sd_model", None)  # the WebUI starts; the model loads later
    monkeypatch.setattr(shared, "__class__", _LoadingShared)
    gr = importlib.import_module("gradio")
    panel_module = importlib.import_module("lorastack_webui.panel")
    services = importlib.import_module("lorastack_webui.services")
    script = webui.runner.alwayson_scripts[0]
    controls = script.ui(False)  # builds the panel: must not touch the model
    assert len(controls) == 2
    panel = panel_module.built_panel("txt2img")
    panel_module.wire(panel, gr.Textbox("", elem_id="txt2img_prompt"))
    assert services.current_family() is None
    before = panel.sync(panel_module.PanelState().to_json(), "", False)
    monkeypatch.setattr(sd_models.model_data, "sd_model", model)  # the model has loaded
    assert services.current_family() is not None
    after = panel.sync(panel_module.PanelState().to_json(), "", False)

    def lora_choices(result: list) -> list[str]:
        i = 1 + panel_module.ROW_CONTROLS.index("lora")  # after the state: row 0's controls
        return result[i]["choices"]

    assert "xl_tagged" in lora_choices(before)  # no model yet: every LoRA is offered
    assert "xl_tagged" not in lora_choices(after) and "char" in lora_choices(after)  # the SD1 model's LoRAs only
    assert after[0] == {"__type__": "update"}  # nothing to sync: the rows are left as they are
