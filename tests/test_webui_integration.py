"""The extension in a stand-in WebUI (tests/webui_stub): the script loaded from its file, jobs run in the WebUI's
order, the built-in Lora extension beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lib_lorastack.formats.hashes import compute_hashes
from tests.helpers.webui import WebUI, same


@pytest.fixture
def webui(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("STUB_DATA_PATH", str(tmp_path / "data"))
    ui = WebUI(tmp_path)
    yield ui
    ui.close()


def short(ui: WebUI, name: str) -> str:
    return compute_hashes(ui.loras / f"{name}.safetensors").short


def test_a_lora_job_then_a_plain_job_gives_the_plain_image_bit_for_bit(webui: WebUI) -> None:
    base, _ = webui.txt2img("a cat")
    with_lora, p = webui.txt2img("a cat <lora:char:1>")
    assert not same(base.images[0], with_lora.images[0])
    assert p.extra_generation_params["Lora hashes"] == f"char: {short(webui, 'char')}"
    assert p.extra_generation_params["LoRA stack"].startswith(f"char@{short(webui, 'char')}:1")
    assert "LoRA stack errors" not in p.extra_generation_params
    after, p2 = webui.txt2img("a cat")
    assert same(base.images[0], after.images[0])
    assert "Lora hashes" not in p2.extra_generation_params
    infotext = with_lora.infotexts[0]
    assert 'Lora hashes: "char: ' in infotext


def test_text_encoder_and_unet_strengths_both_matter(webui: WebUI) -> None:
    base, _ = webui.txt2img("a cat")
    te_only, _ = webui.txt2img("a cat <lora:char:1:0>")
    unet_only, _ = webui.txt2img("a cat <lora:char:0:1>")
    both, _ = webui.txt2img("a cat <lora:char:1:1>")
    images = [base, te_only, unet_only, both]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not same(images[i].images[0], images[j].images[0]), (i, j)


def test_the_same_image_as_the_builtin_within_rounding(webui: WebUI) -> None:
    ours, _ = webui.txt2img("a cat <lora:char:0.8> <lora:Watercolor:0.5>")
    webui.set("lorastack_takeover", False)
    builtin, p = webui.txt2img("a cat <lora:char:0.8> <lora:Watercolor:0.5>")
    assert "LoRA stack" not in p.extra_generation_params and "Lora hashes" in p.extra_generation_params
    assert torch.allclose(ours.images[0].float(), builtin.images[0].float(), atol=2e-3)  # fp16: the built-in rounds after each LoRA
    assert webui.host().session.patched(webui.model._lorastack_key) == {}  # we hold no patch while off


def test_never_two_patchers_when_the_takeover_is_switched_on(webui: WebUI) -> None:
    alone, _ = webui.txt2img("a cat <lora:detail:1>")
    webui.txt2img("a cat")
    webui.set("lorastack_takeover", False)
    webui.txt2img("a cat <lora:char:1>")  # the built-in merges char and keeps its backups on the layers
    assert any(getattr(m, "network_weights_backup", None) is not None for m in webui.model.modules())
    webui.set("lorastack_takeover", True)
    again, _ = webui.txt2img("a cat <lora:detail:1>")
    assert same(alone.images[0], again.images[0])  # char (the built-in's) is gone before ours applies
    assert not any(getattr(m, "network_weights_backup", None) is not None for m in webui.model.modules())


def test_repeated_jobs_and_batch_count_patch_once(webui: WebUI) -> None:
    webui.txt2img("a cat <lora:char:1> <lora:detail:0.5>")
    engine = webui.engine()
    writes = engine.stats.weight_writes
    webui.txt2img("a cat <lora:char:1> <lora:detail:0.5>", n_iter=3)
    assert engine.stats.weight_writes == writes


def test_hires_pass_uses_the_hires_prompts_stack(webui: WebUI) -> None:
    plain, _ = webui.txt2img("a cat", enable_hr=True, hr_prompt="a cat")
    hires, p = webui.txt2img("a cat <lora:char:1>", enable_hr=True, hr_prompt="a cat <lora:detail:1>")
    hashes = p.extra_generation_params["Lora hashes"]
    assert hashes == f"char: {short(webui, 'char')}, detail: {short(webui, 'detail')}"  # first pass + hires, as the built-in
    assert p.extra_generation_params["LoRA stack hires"].startswith("detail@")
    assert not same(plain.images[0], hires.images[0])
    # the hires prompt without tags: the first pass's LoRA is removed for the hires pass
    first_only, p = webui.txt2img("a cat <lora:char:1>", enable_hr=True, hr_prompt="a cat")
    none_hr, _ = webui.txt2img("a cat <lora:char:1>", enable_hr=True, hr_prompt="a cat <lora:char:1>")
    assert not same(first_only.images[0], none_hr.images[0])


def test_schedules_switch_at_steps_and_do_not_leak(webui: WebUI) -> None:
    base, _ = webui.txt2img("a cat", steps=6)
    always, _ = webui.txt2img("a cat <lora:char:0:1>", steps=6)
    late, _ = webui.txt2img("a cat <lora:char:0:1:start=3>", steps=6)
    assert not same(late.images[0], always.images[0]) and not same(late.images[0], base.images[0])
    after, _ = webui.txt2img("a cat", steps=6)
    assert same(after.images[0], base.images[0])
    early_stop, _ = webui.txt2img("a cat <lora:char:0:1:stop=0>", steps=6)  # never active in the UNet
    nothing, _ = webui.txt2img("a cat <lora:char:0:0>", steps=6)  # the same text reaches the text encoder
    assert same(early_stop.images[0], nothing.images[0])


def test_the_webuis_order_lora_tags_then_lyco_tags(webui: WebUI) -> None:
    _, p = webui.txt2img("a cat <lora:char:1> <lyco:detail:1> <lora:Watercolor:1>")
    names = [part.split(":")[0] for part in p.extra_generation_params["Lora hashes"].split(", ")]
    assert names == ["char", "Watercolor", "detail"]


def test_user_mistakes_are_named_where_the_user_looks_and_the_rest_applies(webui: WebUI, capsys) -> None:
    base, _ = webui.txt2img("a cat <lora:detail:1>")
    processed, p = webui.txt2img("a cat <lora:char:0.8x> <lora:chr:1> <lora:broken:1> <lora:xl_only:1> <lora:detail:1>")
    errors = p.extra_generation_params["LoRA stack errors"]
    for needle in ("<lora:char:0.8x>", "not a number", "'chr'", "did you mean", "broken", "xl_only"):
        assert needle in errors, needle
    assert any("chr" in c for c in p.comments)
    assert "[LoRA Stack]" in capsys.readouterr().out
    assert same(processed.images[0], base.images[0])  # detail still applies
    assert "Traceback" not in errors


def test_checkpoint_switch_drops_our_copies_before_the_new_weights_load(webui: WebUI) -> None:
    base, _ = webui.txt2img("a cat")
    webui.txt2img("a cat <lora:char:1>")
    webui.sd_models.reload_model_weights(info=webui.other_ckpt)
    other, _ = webui.txt2img("a cat")
    fresh = WebUIModelImage(webui, webui.other_ckpt)
    assert same(other.images[0], fresh)  # no LoRA and no stale restore of the old checkpoint's weights
    webui.txt2img("a cat <lora:char:1>")
    webui.sd_models.reload_model_weights(info=webui.base_ckpt)
    back, _ = webui.txt2img("a cat")
    assert same(back.images[0], base.images[0])


def WebUIModelImage(webui: WebUI, ckpt) -> torch.Tensor:
    """The plain image of a freshly loaded checkpoint (a separate model object)."""
    from tests.helpers.webui import fake_model

    model = fake_model()
    model.load_state_dict(ckpt.state_dict)
    model.sd_checkpoint_info = ckpt
    saved = webui.shared.sd_model
    webui.shared.sd_model = model
    try:
        p = webui.processing.StableDiffusionProcessing(model, "a cat", scripts=None)
        return webui.processing.process_images(p).images[0]
    finally:
        webui.shared.sd_model = saved


def test_refiner_gets_its_own_state(webui: WebUI) -> None:
    """Half-way through sampling the refiner checkpoint is swapped in: our patches leave with the old weights, the
    refiner runs without them, and the next job starts clean."""
    base, _ = webui.txt2img("a cat")
    webui.txt2img("a cat <lora:char:1>", refiner=webui.other_ckpt)
    webui.sd_models.reload_model_weights(info=webui.base_ckpt)
    after, _ = webui.txt2img("a cat")
    assert same(after.images[0], base.images[0])


def test_paste_resolves_by_hash_inside_the_index_and_never_by_the_empty_hash(webui: WebUI) -> None:
    _, p = webui.txt2img("a cat <lora:char:0.8>")
    infotext = webui.processing.create_infotext(p, "a cat <lora:char:0.8>")
    os.rename(webui.loras / "char.safetensors", webui.loras / "char_v2.safetensors")
    webui.networks.list_available_networks()
    assert webui.paste(infotext)["Prompt"] == "a cat <lora:char_v2:0.8>"
    zero = compute_hashes(webui.loras / "zero.safetensors").short
    webui.networks.available_networks["zero"].read_hash()  # the built-in now knows the empty file by the empty hash
    hostile = f'a dog <lora:mine:1>\nSteps: 4, Lora hashes: "mine: {zero}, evil: ../../x"'
    assert webui.paste(hostile)["Prompt"] == "a dog <lora:mine:1>"  # the built-in alone would swap in 'zero'


def test_images_made_with_the_builtin_paste_correctly(webui: WebUI) -> None:
    webui.set("lorastack_takeover", False)
    _, p = webui.txt2img("a cat <lora:Watercolor:0.7>")
    infotext = webui.processing.create_infotext(p, "a cat <lora:Watercolor:0.7>")
    webui.set("lorastack_takeover", True)
    os.rename(webui.loras / "style.safetensors", webui.loras / "style_renamed.safetensors")
    webui.networks.list_available_networks()
    assert webui.paste(infotext)["Prompt"] == "a cat <lora:Watercolor:0.7>"  # alias from the file's metadata


def test_a_job_that_skips_extra_networks_runs_without_our_loras(webui: WebUI) -> None:
    base, _ = webui.txt2img("a cat")
    webui.txt2img("a cat <lora:char:1>")
    skipped, _ = webui.txt2img("a cat <lora:char:1>", disable_extra_networks=True)
    assert same(skipped.images[0], base.images[0])


def test_settings_section_and_bad_values(webui: WebUI, capsys) -> None:
    labels = webui.shared.opts.data_labels
    keys = [k for k, v in labels.items() if v.section == ("lora_stack", "LoRA Stack")]
    assert {"lorastack_mode", "lorastack_backups", "lorastack_cache_mib", "lorastack_takeover", "lorastack_messages"} <= set(keys)
    webui.shared.opts.data["lorastack_mode"] = "warp"
    processed, _ = webui.txt2img("a cat <lora:char:1>")
    assert "lorastack_mode" in capsys.readouterr().out
    webui.set("lorastack_mode", "online")
    online, _ = webui.txt2img("a cat <lora:char:1>")
    assert torch.allclose(online.images[0].float(), processed.images[0].float(), atol=3e-3)  # fp16 activations


def test_without_the_builtin_our_own_index_serves(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("STUB_DATA_PATH", str(tmp_path / "data"))
    ui = WebUI(tmp_path, with_builtin=False)
    try:
        base, _ = ui.txt2img("a cat")
        lora, p = ui.txt2img("a cat <lora:Watercolor:1>")
        assert not same(base.images[0], lora.images[0])
        assert p.extra_generation_params["Lora hashes"] == f"Watercolor: {short(ui, 'style')}"
    finally:
        ui.close()


def test_our_handler_takes_over_whatever_order_extensions_register_in(webui: WebUI) -> None:
    from modules import extra_networks

    handler = extra_networks.extra_network_registry["lora"]
    assert type(handler).__name__ == "LoraStackTags" and extra_networks.extra_network_aliases["lyco"] is handler
    assert type(handler.builtin).__name__ == "ExtraNetworkLora"
    # another registration after start (e.g. a reloaded UI): the next job takes the tags back
    extra_networks.register_extra_network(handler.builtin)
    _, p = webui.txt2img("a cat <lora:char:1>")
    assert "LoRA stack" in p.extra_generation_params


def test_lowvram_style_moves_between_jobs(webui: WebUI) -> None:
    """--lowvram/--medvram move modules between devices: every parameter gets new storage. Patches travel with the
    weights, and restores write into wherever the weights are now."""
    base, _ = webui.txt2img("a cat")
    lora, _ = webui.txt2img("a cat <lora:char:1> <lora:detail:0.5>")

    def move_everything() -> None:
        with torch.no_grad():
            for module in webui.model.modules():
                for _name, param in list(module.named_parameters(recurse=False)):
                    param.data = param.data.clone()  # what .to(other device) and back does to a parameter

    move_everything()
    again, _ = webui.txt2img("a cat <lora:char:1> <lora:detail:0.5>")
    assert same(again.images[0], lora.images[0])
    move_everything()
    changed, _ = webui.txt2img("a cat <lora:char:0.3>")
    move_everything()
    plain, _ = webui.txt2img("a cat")
    assert same(plain.images[0], base.images[0])
    assert not same(changed.images[0], base.images[0])


def test_panel_rows_apply_without_touching_the_prompt(webui: WebUI) -> None:
    tagged, _ = webui.txt2img("a cat <lora:char:0.7>")
    rows = json.dumps({"rows": [{"lora": "char", "te": 0.7, "unet": 0.7}]})
    panel, p = webui.txt2img("a cat", script_args=[True, rows])
    assert same(panel.images[0], tagged.images[0])
    assert p.prompt == "a cat" and p.extra_generation_params["LoRA stack"].startswith("char@")
    closed, _ = webui.txt2img("a cat", script_args=[False, rows])  # the panel switched off adds nothing
    plain, _ = webui.txt2img("a cat")
    assert same(closed.images[0], plain.images[0])


def test_the_stack_alone_as_the_api_argument(webui: WebUI) -> None:
    from lib_lorastack.host.panel import PanelState

    tagged, _ = webui.txt2img("a cat <lora:char:0.7>")
    default_state = PanelState().to_json()  # what the WebUI puts in the arguments the request left out
    for stack in ({"rows": [{"lora": "char", "te": 0.7}]}, [{"lora": "char", "te": 0.7}]):
        panel, p = webui.txt2img("a cat", script_args=[stack, default_state])
        assert same(panel.images[0], tagged.images[0]) and p.prompt == "a cat"
    _, p = webui.txt2img("a cat", script_args=[{"rows": [{"lora": "char", "te": "lots"}]}, default_state])
    assert "row 1: te 'lots' is not a number" in p.extra_generation_params["LoRA stack errors"]


def test_the_prompt_tag_wins_over_a_panel_row_and_the_summary_says_so(webui: WebUI) -> None:
    tagged, _ = webui.txt2img("a cat <lora:char:0.7>")
    rows = json.dumps([{"lora": "char", "te": 0.2}])
    both, p = webui.txt2img("a cat <lora:char:0.7>", script_args=[True, rows])
    assert same(both.images[0], tagged.images[0])
    assert "prompt's tag is used" in p.extra_generation_params["LoRA stack errors"]


def test_multiplier_and_mode_override_from_the_api_argument(webui: WebUI) -> None:
    half, _ = webui.txt2img("a cat <lora:char:0.5>")
    scaled, _ = webui.txt2img("a cat <lora:char:1>", script_args=[True, {"rows": [], "multiplier": 0.5}])
    assert same(scaled.images[0], half.images[0])
    online, _ = webui.txt2img("a cat <lora:char:0.5>", script_args=[True, {"rows": [], "mode": "online"}])
    assert torch.allclose(online.images[0].float(), half.images[0].float(), atol=3e-3)
    assert webui.engine().mode == "online"


def test_malformed_api_argument_is_named_and_the_rest_applies(webui: WebUI) -> None:
    detail, _ = webui.txt2img("a cat", script_args=[True, [{"lora": "detail", "te": 1}]])
    bad = [{"lora": "detail", "te": 1}, {"lora": "char", "te": "lots"}, {"lora": "x", "colour": 2}]
    processed, p = webui.txt2img("a cat", script_args=[True, bad])
    errors = p.extra_generation_params["LoRA stack errors"]
    assert "row 2: te 'lots' is not a number" in errors and "row 3: unknown field(s) 'colour'" in errors
    assert same(processed.images[0], detail.images[0])
    _, p = webui.txt2img("a cat", script_args=[True, "{not json"])
    assert "not JSON" in p.extra_generation_params["LoRA stack errors"]


def test_xyz_axes_change_the_rows_of_the_job(webui: WebUI) -> None:
    from lorastack_webui.xyz import _change, _with_row

    p = webui.processing.StableDiffusionProcessing(webui.shared.sd_model, "a cat", scripts=webui.runner, script_args=[False, ""])
    _change(p, lambda s: _with_row(s, 2, lora="detail", te=0.4))
    enabled, state = p.script_args
    rows = json.loads(state)["rows"]
    assert enabled is True and [r["lora"] for r in rows] == ["", "detail"] and rows[1]["unet"] == 0.4


def test_pasted_infotext_restores_panel_rows(webui: WebUI) -> None:
    from lorastack_webui.panel import rows_from_infotext

    _, p = webui.txt2img("a cat <lora:char:1>", script_args=[True, [{"lora": "detail", "te": 0.3, "lbw": "OUTALL"}]])
    params = webui.paste(webui.processing.create_infotext(p, "a cat <lora:char:1>"))
    rows = json.loads(rows_from_infotext(params, "LoRA stack"))["rows"]
    assert [r["lora"] for r in rows] == ["detail"] and rows[0]["te"] == 0.3 and rows[0]["lbw"].startswith("1,0,0")


def test_preset_tag_expands_before_the_job_and_is_recorded(webui: WebUI) -> None:
    from lorastack_webui import presets

    presets.save_rows("brand", __import__("lib_lorastack.host.panel", fromlist=["PanelState"]).PanelState(),
                      "<lora:char:0.8> <lora:Watercolor:0.5:lbw=OUTALL>", "lsx_girl, red scarf", overwrite=False)
    direct, _ = webui.txt2img("a cat <lora:char:0.8> <lora:Watercolor:0.5:lbw=OUTALL>")
    processed, p = webui.txt2img("a cat <lorastack:brand>")
    assert p.prompt.startswith("a cat <lora:char:0.8> <lora:Watercolor:0.5:lbw=OUTALL>")
    assert same(processed.images[0], webui.txt2img("a cat <lora:char:0.8> <lora:Watercolor:0.5:lbw=OUTALL> lsx_girl, red scarf")[0].images[0])
    assert "lsx_girl, red scarf" in p.prompt and "LoRA stack errors" not in p.extra_generation_params
    assert p.extra_generation_params["Lora hashes"].startswith("char: ")
    half, p2 = webui.txt2img("a cat <lorastack:brand:0.5>")
    assert "<lora:char:0.4>" in p2.prompt
    missing, p3 = webui.txt2img("a cat <lorastack:brnd> <lora:detail:1>")
    errors = p3.extra_generation_params["LoRA stack errors"]
    assert "no preset named 'brnd'" in errors and "did you mean 'brand'" in errors
    assert "LoRA stack" in p3.extra_generation_params  # detail still applies
    del direct, processed, half, missing


def test_preset_found_by_hash_after_the_file_is_renamed(webui: WebUI) -> None:
    from lib_lorastack.host.panel import PanelState
    from lorastack_webui import presets

    presets.save_rows("one", PanelState(), "<lora:char:0.7>", "", overwrite=False)
    before, _ = webui.txt2img("a cat <lora:char:0.7>")
    os.rename(webui.loras / "char.safetensors", webui.loras / "char_renamed.safetensors")
    webui.networks.list_available_networks()
    after, p = webui.txt2img("a cat <lorastack:one>")
    assert "<lora:char_renamed:0.7>" in p.prompt
    assert same(after.images[0], before.images[0])


def test_broken_preset_file_is_named_and_nothing_is_overwritten(webui: WebUI) -> None:
    from lorastack_webui import presets

    path = presets.store().path
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("{ this is not json")
    _, p = webui.txt2img("a cat <lorastack:any> <lora:detail:1>")
    errors = p.extra_generation_params["LoRA stack errors"]
    assert "presets:" in errors and str(Path(path).name) in errors
    assert "<lorastack" not in p.prompt and Path(path).read_text() == "{ this is not json"


def test_an_infotext_from_before_the_count_from_1_pastes_to_the_same_steps(webui: WebUI) -> None:
    """Schedules once counted from 0: such an image's prompt and panel rows move up by one step on paste; a new
    infotext pastes unchanged."""
    from lorastack_webui.panel import rows_from_infotext

    short = compute_hashes(webui.loras / "char.safetensors").short
    old = f'a cat <lora:char:1:start=3>\nSteps: 8, Seed: 1, LoRA stack: "char@{short}:1:start=3; detail@-:0.5:stop=6"'
    params = webui.paste(old)
    assert params["Prompt"] == "a cat <lora:char:1:start=4>"
    rows = json.loads(rows_from_infotext(params, "LoRA stack"))["rows"]
    assert [(r["lora"], r["start"], r["stop"]) for r in rows] == [("detail", None, 7)]

    _, p = webui.txt2img("a cat <lora:char:1:start=3>")
    new = webui.processing.create_infotext(p, "a cat <lora:char:1:start=3>")
    assert "@steps=1" in new
    assert webui.paste(new)["Prompt"] == "a cat <lora:char:1:start=3>"


def test_a_model_family_the_engine_does_not_handle_goes_to_the_builtin(webui: WebUI) -> None:
    webui.model.is_sd1, webui.model.is_sd3 = False, True  # e.g. SD3, which v1.10's built-in applies
    base, _ = webui.txt2img("a cat")
    with_lora, p = webui.txt2img("a cat <lora:char:1>")
    assert "this model (SD3) is not SD1.x, SD2.x or SDXL: 1 LoRA tag(s) handed to the built-in" in p.extra_generation_params["LoRA stack errors"]
    assert "LoRA stack" not in p.extra_generation_params and "Lora hashes" in p.extra_generation_params  # the built-in's
    assert not same(base.images[0], with_lora.images[0])
    assert webui.host().session.patched(webui.model._lorastack_key) == {}
