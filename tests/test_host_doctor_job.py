"""The panel's doctor and bake (host-free): the stack as it would apply, measured or baked into the LoRA folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib_lorastack.formats.loader import load_lora
from lib_lorastack.formats.targets import Family
from lib_lorastack.host.doctor_job import DoctorJobError, run_bake, run_doctor, stack_request
from lib_lorastack.host.panel import PanelState, Row
from lib_lorastack.stack import LoraCatalog
from tests.helpers.host_fixtures import lora_folder


def test_stack_request_is_prompt_then_panel_rows_times_the_multiplier() -> None:
    state = PanelState((Row("b", 0.5, 0.5), Row("a", 0.1, 0.1)), multiplier=2.0)
    r = stack_request(state, "x <lora:a:0.4>")
    assert [(e.name, e.te) for e in r.entries] == [("a", 0.8), ("b", 1.0)]


def test_doctor_report_and_heatmap(tmp_path: Path) -> None:
    folder = lora_folder(tmp_path)
    text, png = run_doctor(PanelState((Row("detail", 0.6, 0.6),)), "x <lora:char:0.8>", LoraCatalog(folder), Family.SD1)
    assert "char" in text and "detail" in text
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bake_writes_one_lora_and_refuses_bad_names_and_overwrites(tmp_path: Path) -> None:
    folder = lora_folder(tmp_path)
    catalog = LoraCatalog(folder)
    message = run_bake(PanelState(), "x <lora:char:0.8> <lora:detail:0.5>", catalog, Family.SD1, folder, "pair")
    assert "pair.safetensors" in message
    assert load_lora(folder / "pair.safetensors", Family.SD1).modules
    with pytest.raises(DoctorJobError, match="exists"):
        run_bake(PanelState(), "x <lora:char:0.8>", catalog, Family.SD1, folder, "pair")
    for bad in ("../evil", "a/b", "", ".hidden", "x:y"):
        with pytest.raises(DoctorJobError, match="not a file name"):
            run_bake(PanelState(), "x <lora:char:1>", catalog, Family.SD1, folder, bad)
    with pytest.raises(DoctorJobError, match="no LoRA"):
        run_doctor(PanelState(), "plain", catalog, Family.SD1)
    with pytest.raises(DoctorJobError, match="chr"):
        run_doctor(PanelState(), "x <lora:chr:1>", catalog, Family.SD1)
