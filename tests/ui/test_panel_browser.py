"""The panel in a real browser: gradio 3.41.2 (the WebUI's pin, .venv-ui) or 4.40.0 (Forge's and Forge Neo's,
.venv-ui4) served locally, driven by headless Chromium (Debian's chromium and chromedriver) through Selenium.
Screenshots go to $LORASTACK_ARTIFACTS (default tests/ui/artifacts). Run by ``bash run.sh test`` in both
environments; elsewhere it is skipped unless LORASTACK_UI_TESTS=1, which makes missing pieces a failure."""

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
from selenium.common.exceptions import (  # noqa: E402
    ElementClickInterceptedException,
    ElementNotInteractableException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.helpers.host_fixtures import lora_folder  # noqa: E402
from tests.ui.panel_app import make_app  # noqa: E402

ARTIFACTS = Path(os.environ.get("LORASTACK_ARTIFACTS", Path(__file__).parent / "artifacts")) / f"gradio-{gradio.__version__}"
GRADIO_VERSIONS = ("3.41.2", "4.40.0")  # the WebUI's pin; Forge's and Forge Neo's
LONG_NAME = "watercolor_portrait_v2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    assert gradio.__version__ in GRADIO_VERSIONS, gradio.__version__
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        if REQUIRED:
            pytest.fail("Debian's chromium and chromium-driver are needed (apt-get install chromium chromium-driver)")
        pytest.skip("no chromium/chromedriver")
    folder = lora_folder(tmp_path_factory.mktemp("ui"))
    (folder / "char.json").write_text(json.dumps({"preferred weight": 0.6, "activation text": "lsx_girl, green eyes"}))
    shutil.copy(folder / "detail.safetensors", folder / f"{LONG_NAME}.safetensors")
    demo = make_app(folder, "")
    demo.queue()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, show_error=True, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1600,1600", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--lang=en-US")
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
    """Type into a number box as a user does (select, type, leave)."""
    box = _el(driver, f"{css} textarea, {css} input")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(value, Keys.TAB)


def _clickable(driver, css: str):
    """The element once it can take a click (gradio 4 renders a row's controls just after the row shows)."""
    end = time.time() + 20
    while True:
        element = _el(driver, css)
        try:
            element.click()
            return element
        except (ElementNotInteractableException, ElementClickInterceptedException, StaleElementReferenceException):
            if time.time() > end:
                raise
            time.sleep(0.3)


def _choose(driver, css: str, value: str) -> None:
    box = _clickable(driver, f"{css} input")
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
    _clickable(d, "#lorastack_txt2img_row0_more input")  # the row's block weights and steps
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
    _wait(d, lambda: "(panel)" not in _summary(d), "the panel rows cleared")  # before typing, as a person would
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
    _wait(d, lambda: "(panel)" not in _summary(d), "the panel rows cleared")
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


# --------------------------------------------------------------------- issue 18: each fails on the panel before it
def _fresh(d, prompt: str = "") -> None:
    """The panel open, no panel rows, the given prompt (typed, then the box left)."""
    if not _el(d, "#lorastack_txt2img_clear").is_displayed():
        _el(d, "#lorastack_txt2img_accordion").click()
        _wait(d, lambda: _visible(d, "#lorastack_txt2img_clear"), "the panel open")
    _el(d, "#lorastack_txt2img_clear").click()
    _wait(d, lambda: "(panel)" not in _summary(d), "the panel rows cleared")
    time.sleep(0.5)
    box = _el(d, "#txt2img_prompt textarea")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(prompt, Keys.TAB)
    _wait(d, lambda: _prompt(d) == prompt, "the prompt typed")


INSIDE = {"presets": "preset_save", "doctor": "doctor_run", "blocks": "block_load"}


def _open(d, css: str) -> None:
    """Open an accordion unless it is open (a second click would close it)."""
    inner = d.find_elements(By.CSS_SELECTOR, f"#lorastack_txt2img_{INSIDE[css.rsplit('_', 1)[1]]}")
    if not (inner and inner[0].is_displayed()):
        _el(d, css).click()
        _wait(d, lambda: _visible(d, f"#lorastack_txt2img_{INSIDE[css.rsplit('_', 1)[1]]}"), f"{css} open")


def _save_preset(d, name: str, prompt: str) -> None:
    _fresh(d, prompt)
    _wait(d, lambda: "LoRA" in _summary(d) and "No LoRA" not in _summary(d), "the tags' rows")
    _open(d, "#lorastack_txt2img_presets")
    box = _el(d, "#lorastack_txt2img_preset_name textarea")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(name, Keys.TAB)
    _el(d, "#lorastack_txt2img_preset_save").click()
    _wait(d, lambda: f"preset {name!r} saved" in _summary(d), "the preset saved")


def test_1_last_job_shows_the_job_that_just_ran(browser) -> None:
    d = browser
    _fresh(d, "a cat <lora:char:0.8> <lora:detail:0.6>")
    _wait(d, lambda: "2 LoRAs" in _summary(d), "two rows")
    assert "Last job" not in _summary(d)
    _el(d, "#txt2img_generate").click()
    _wait(d, lambda: "Last job: char, detail (fused)" in _summary(d), "the job's line as soon as it ended")
    _shot(d, "issue18-1-last-job")
    _fresh(d, "a cat <lora:detail:0.6>")
    _el(d, "#txt2img_generate").click()
    _wait(d, lambda: "Last job: detail (fused)" in _summary(d), "the next job's line, not one job behind")


def test_2_preset_tags_in_the_summary_the_doctor_and_load(browser) -> None:
    d = browser
    _save_preset(d, "brand", "x <lora:char:0.8> <lora:detail:0.6>")
    _fresh(d, "photo, <lorastack:brand>")
    _wait(d, lambda: "2 LoRAs: char 0.8 (preset), detail 0.6 (preset)" in _summary(d), "the preset's LoRAs in the summary")
    _fresh(d, "photo, <lorastack:brnd>")
    _wait(d, lambda: "no preset named 'brnd'" in _summary(d), "an unknown preset named")
    _fresh(d, "photo, <lorastack:brand>")
    _open(d, "#lorastack_txt2img_doctor")
    _el(d, "#lorastack_txt2img_doctor_run").click()
    report = lambda: _el(d, "#lorastack_txt2img_doctor_report textarea").get_attribute("value")  # noqa: E731
    _wait(d, lambda: "char" in report() and "detail" in report(), "the doctor diagnosing the preset's LoRAs", timeout=60)
    _open(d, "#lorastack_txt2img_presets")
    _choose(d, "#lorastack_txt2img_preset_choice", "brand")
    _el(d, "#lorastack_txt2img_preset_load").click()
    _wait(d, lambda: "2 LoRAs: char 0.8 (panel), detail 0.6 (panel)" in _summary(d), "the preset's rows, once")
    assert "<lorastack:brand>" not in _prompt(d) and "taken out of the prompt" in _summary(d)
    _shot(d, "issue18-2-preset-load")


def test_3_a_bad_number_is_flagged_as_the_prompt_changes(browser) -> None:
    d = browser
    _fresh(d, "")
    box = _el(d, "#txt2img_prompt textarea")
    box.send_keys("a cat <lora:char:0.8x>")  # not left: flagged while typing
    _wait(d, lambda: "<lora:char:0.8x>: TE strength '0.8x' is not a number" in _summary(d), "the bad number in the summary")
    _shot(d, "issue18-3-bad-number")


def test_4_rows_in_stack_order_typed_tags_and_the_block_editor_rows(browser) -> None:
    d = browser
    _fresh(d, "a cat")
    _el(d, "#lorastack_txt2img_add").click()
    _wait(d, lambda: _visible(d, "#lorastack_txt2img_row0"), "a panel row")
    _choose(d, "#lorastack_txt2img_row0_lora", "detail")
    _wait(d, lambda: "detail 1 (panel)" in _summary(d), "the panel row")
    box = _el(d, "#txt2img_prompt textarea")
    box.click()
    box.send_keys(Keys.END, " <lora:char:0.5>")  # typed fast, the box never left
    _wait(d, lambda: "2 LoRAs: char 0.5, detail 1 (panel)" in _summary(d), "the typed tag in the stack")
    _wait(d, lambda: _el(d, "#lorastack_txt2img_row0_lora input").get_attribute("value") == "char", "the prompt's row first")
    assert _el(d, "#lorastack_txt2img_row1_lora input").get_attribute("value") == "detail"
    assert d.switch_to.active_element == _el(d, "#txt2img_prompt textarea"), "the prompt box kept the focus"
    _open(d, "#lorastack_txt2img_blocks")
    _el(d, "#lorastack_txt2img_block_row input").click()
    options = lambda: [o.get_attribute("aria-label") for o in d.find_elements(By.CSS_SELECTOR, "#lorastack_txt2img_block_row ul li")]  # noqa: E731
    _wait(d, lambda: options() == ["1", "2"], "the block editor's row choice: the two rows")
    _shot(d, "issue18-4-order")
    _el(d, "#lorastack_txt2img_block_row input").send_keys(Keys.ESCAPE)


def test_7_one_line_per_lora_with_details_on_demand(browser) -> None:
    d = browser
    _fresh(d, "a cat <lora:char:0.8> <lora:detail:0.6:lbw=OUTALL>")
    _el(d, "#lorastack_txt2img_add").click()
    _wait(d, lambda: _visible(d, "#lorastack_txt2img_row2"), "a panel row")
    _choose(d, "#lorastack_txt2img_row2_lora", LONG_NAME)
    _wait(d, lambda: f"{LONG_NAME} 1 (panel)" in _summary(d), "the long-named LoRA's row")
    row = _el(d, "#lorastack_txt2img_row0")
    assert row.size["height"] <= 60, f"a row is {row.size['height']} px tall"
    for i in range(3):  # everything of the row on its line, inside the panel
        line = _el(d, f"#lorastack_txt2img_row{i}")
        for part in ("enabled", "lora", "te", "linked", "unet", "in_prompt", "triggers", "more", "up", "down", "remove"):
            el = _el(d, f"#lorastack_txt2img_row{i}_{part}")
            assert el.is_displayed(), part
            assert el.location["y"] - line.location["y"] < 40 and el.location["x"] + el.size["width"] <= line.location["x"] + line.size["width"] + 1, part
    name = _el(d, "#lorastack_txt2img_row2_lora input")
    fits = "return arguments[0].scrollWidth <= arguments[0].clientWidth"
    assert d.execute_script(fits, name), "the LoRA's name is cut off"
    name.click()
    _wait(d, lambda: d.find_elements(By.CSS_SELECTOR, "#lorastack_txt2img_row2_lora ul li"), "the LoRA choices")
    for item in d.find_elements(By.CSS_SELECTOR, "#lorastack_txt2img_row2_lora ul li"):
        assert d.execute_script(fits, item), f"the choice {item.text!r} is cut off"
    name.send_keys(Keys.ESCAPE)
    assert not _visible(d, "#lorastack_txt2img_row0_details"), "block weights and steps stay folded when unset"
    assert _visible(d, "#lorastack_txt2img_row1_details"), "they open by themselves when set"
    _clickable(d, "#lorastack_txt2img_row0_more input")
    _wait(d, lambda: _visible(d, "#lorastack_txt2img_row0_details"), "the row's ⚙ toggle")
    _shot(d, "issue18-7-rows")
    _open(d, "#lorastack_txt2img_doctor")
    _el(d, "#lorastack_txt2img_doctor_run").click()
    area = lambda: _el(d, "#lorastack_txt2img_doctor_report textarea")  # noqa: E731
    _wait(d, lambda: LONG_NAME in area().get_attribute("value"), "the doctor's report", timeout=60)
    clipped = "var t = arguments[0], s = getComputedStyle(t); return t.scrollWidth > t.clientWidth && !['auto', 'scroll'].includes(s.overflowX);"
    assert not d.execute_script(clipped, area()), "the report is clipped on the right"
    _shot(d, "issue18-7-doctor")
