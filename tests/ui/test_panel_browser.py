"""The panel in a real browser: gradio 3.41.2 (the WebUI's pin) served locally, driven by headless Chromium
(Debian's chromium and chromedriver) through Selenium. Screenshots go to $LORASTACK_ARTIFACTS (default
tests/ui/artifacts). Run by ``bash run.sh test`` in its own environment (.venv-ui); elsewhere it is skipped unless
LORASTACK_UI_TESTS=1, which makes missing pieces a failure."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

REQUIRED = os.environ.get("LORASTACK_UI_TESTS") == "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if not REQUIRED:
    pytest.importorskip("gradio", reason="the browser tests run in .venv-ui (bash run.sh test)")
    pytest.importorskip("selenium", reason="the browser tests run in .venv-ui (bash run.sh test)")

import gradio  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.helpers.host_fixtures import lora_folder  # noqa: E402
from tests.ui.panel_app import make_app  # noqa: E402

ARTIFACTS = Path(os.environ.get("LORASTACK_ARTIFACTS", Path(__file__).parent / "artifacts"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    assert gradio.__version__ == "3.41.2", gradio.__version__
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        if REQUIRED:
            pytest.fail("Debian's chromium and chromium-driver are needed (apt-get install chromium chromium-driver)")
        pytest.skip("no chromium/chromedriver")
    folder = lora_folder(tmp_path_factory.mktemp("ui"))
    (folder / "char.json").write_text(json.dumps({"preferred weight": 0.6, "activation text": "lsx_girl, green eyes"}))
    demo = make_app(folder, "")
    demo.queue()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, show_error=True, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1600", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.get(f"http://127.0.0.1:{port}/")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
        demo.close()


def _el(driver, css: str):
    return WebDriverWait(driver, 20).until(lambda d: d.find_element(By.CSS_SELECTOR, css))


def _prompt(driver) -> str:
    return _el(driver, "#txt2img_prompt textarea").get_attribute("value")


def _summary(driver) -> str:
    return _el(driver, "#lorastack_txt2img_summary").text


def _wait(driver, predicate, what: str, timeout: float = 20) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.2)
    driver.save_screenshot(str(ARTIFACTS / "failure.png"))
    raise AssertionError(f"timed out waiting for {what}; prompt={_prompt(driver)!r} summary={_summary(driver)!r}")


def _visible(driver, css: str) -> bool:
    return _el(driver, css).is_displayed()


def _set_number(driver, css: str, value: str) -> None:
    """Type into a slider's number box as a user does (select, type, leave)."""
    box = _el(driver, f"{css} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(value, Keys.TAB)


def _choose(driver, css: str, value: str) -> None:
    box = _el(driver, f"{css} input")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(value)
    time.sleep(0.5)
    box.send_keys(Keys.ENTER)


def _shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def test_panel_follows_the_prompt_and_edits_its_tags(browser) -> None:
    d = browser
    _el(d, "#lorastack_txt2img_accordion").click()  # open the panel
    prompt_box = _el(d, "#txt2img_prompt textarea")
    prompt_box.send_keys("portrait of a girl <lora:char:0.8>", Keys.TAB)  # typed, then the box left (blur)
    _wait(d, lambda: _visible(d, "#lorastack_txt2img_row0") and "char 0.8" in _summary(d), "the prompt's tag as row 1")
    assert _el(d, "#lorastack_txt2img_row0_in_prompt input").is_selected()
    _shot(d, "1-prompt-tag-as-row")

    _set_number(d, "#lorastack_txt2img_row0_te", "0.5")
    _wait(d, lambda: _prompt(d) == "portrait of a girl <lora:char:0.5>", "the tag rewritten from the panel")
    _shot(d, "2-strength-edited")

    _el(d, "#lorastack_txt2img_add").click()
    _wait(d, lambda: _visible(d, "#lorastack_txt2img_row1"), "a second row")
    _choose(d, "#lorastack_txt2img_row1_lora", "detail")
    _wait(d, lambda: "detail 1 (panel)" in _summary(d), "the panel-only row in the summary")
    assert _prompt(d) == "portrait of a girl <lora:char:0.5>"  # a panel-only row leaves the prompt alone
    _shot(d, "3-panel-only-row")

    _el(d, "#lorastack_txt2img_row1_enabled input").click()
    _wait(d, lambda: "detail" not in _summary(d), "the row switched off")
    _el(d, "#lorastack_txt2img_row1_enabled input").click()
    _wait(d, lambda: "detail 1 (panel)" in _summary(d), "the row switched on again")

    _el(d, "#lorastack_txt2img_row1_in_prompt input").click()
    _wait(d, lambda: _prompt(d) == "portrait of a girl <lora:char:0.5> <lora:detail:1>", "the row moved into the prompt")
    _shot(d, "4-row-into-prompt")

    _el(d, "#lorastack_txt2img_row0_remove").click()
    _wait(d, lambda: _prompt(d) == "portrait of a girl <lora:detail:1>", "the removed row's tag gone")

    prompt_box = _el(d, "#txt2img_prompt textarea")
    prompt_box.send_keys(Keys.CONTROL, "a")
    prompt_box.send_keys("portrait of a girl", Keys.TAB)
    _wait(d, lambda: "No LoRA in the stack." in _summary(d), "the deleted tag's row gone")
    _shot(d, "5-tag-deleted")


def test_defaults_triggers_and_validation(browser) -> None:
    d = browser
    _el(d, "#lorastack_txt2img_add").click()
    _wait(d, lambda: _visible(d, "#lorastack_txt2img_row0"), "a row")
    _choose(d, "#lorastack_txt2img_row0_lora", "char")
    _wait(d, lambda: "char 0.6 (panel)" in _summary(d), "the preferred weight from char.json")
    _el(d, "#lorastack_txt2img_row0_triggers").click()
    _wait(d, lambda: "lsx_girl, green eyes" in _prompt(d), "trigger words added")
    _el(d, "#lorastack_txt2img_row0_triggers").click()
    _wait(d, lambda: "lsx_girl" not in _prompt(d), "trigger words removed")
    box = _el(d, "#lorastack_txt2img_row0_lbw textarea")
    box.send_keys("1,0,q")
    _wait(d, lambda: "row 1 blocks:" in _summary(d), "the bad vector named while typing")
    _shot(d, "6-validation")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("OUTALL", Keys.TAB)
    _wait(d, lambda: "lbw=OUTALL" in _summary(d), "a preset accepted")
    _shot(d, "7-blocks")


def test_presets_save_load_and_delete_from_the_panel(browser) -> None:
    d = browser
    _el(d, "#lorastack_txt2img_clear").click()
    prompt_box = _el(d, "#txt2img_prompt textarea")
    prompt_box.send_keys(Keys.CONTROL, "a")
    prompt_box.send_keys("a cat <lora:char:0.7>", Keys.TAB)
    _wait(d, lambda: "char 0.7" in _summary(d), "the tag's row")
    _el(d, "#lorastack_txt2img_presets").click()
    name = _el(d, "#lorastack_txt2img_preset_name textarea")
    name.send_keys("brand", Keys.TAB)
    _el(d, "#lorastack_txt2img_preset_save").click()
    _wait(d, lambda: "preset 'brand' saved" in _summary(d), "the preset saved")
    prompt_box = _el(d, "#txt2img_prompt textarea")
    prompt_box.send_keys(Keys.CONTROL, "a")
    prompt_box.send_keys("a cat", Keys.TAB)
    _wait(d, lambda: "No LoRA in the stack." in _summary(d), "the rows gone with the tag")
    _choose(d, "#lorastack_txt2img_preset_choice", "brand")
    _el(d, "#lorastack_txt2img_preset_load").click()
    _wait(d, lambda: "char 0.7 (panel)" in _summary(d), "the preset loaded as a panel row")
    _shot(d, "8-preset-loaded")
    _el(d, "#lorastack_txt2img_preset_delete").click()
    _wait(d, lambda: "tick 'really delete'" in _summary(d), "delete asks for confirmation")
    _el(d, "#lorastack_txt2img_preset_confirm input").click()
    _el(d, "#lorastack_txt2img_preset_delete").click()
    _wait(d, lambda: "preset 'brand' deleted" in _summary(d), "the preset deleted")


def test_the_stack_doctor_and_the_bake_from_the_panel(browser) -> None:
    d = browser
    _el(d, "#lorastack_txt2img_clear").click()
    prompt_box = _el(d, "#txt2img_prompt textarea")
    prompt_box.send_keys(Keys.CONTROL, "a")
    prompt_box.send_keys("a cat <lora:char:0.8> <lora:detail:0.6>", Keys.TAB)
    _wait(d, lambda: "2 LoRAs" in _summary(d), "two rows")
    _el(d, "#lorastack_txt2img_doctor").click()
    _el(d, "#lorastack_txt2img_doctor_run").click()
    report = lambda: _el(d, "#lorastack_txt2img_doctor_report textarea").get_attribute("value")  # noqa: E731
    _wait(d, lambda: "char" in report() and "detail" in report(), "the doctor's report", timeout=60)
    _wait(d, lambda: d.find_elements(By.CSS_SELECTOR, "#lorastack_txt2img_doctor_image img"), "the heatmap", timeout=30)
    _shot(d, "9-doctor")
    _el(d, "#lorastack_txt2img_bake_name textarea").send_keys("baked_pair", Keys.TAB)
    _el(d, "#lorastack_txt2img_bake").click()
    _wait(d, lambda: "baked 2 LoRA(s) into baked_pair.safetensors" in report(), "the bake", timeout=60)
    _el(d, "#lorastack_txt2img_bake").click()
    _wait(d, lambda: report().startswith("Not baked:") and "exists" in report(), "no overwrite of the baked file")
