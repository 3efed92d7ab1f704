"""The extension in a stand-in Forge (tests/forge_stub): our engine patches Forge's patcher models in place, the
built-in sd_forge_lora adds nothing while we handle the tags, and Forge's loading, device moves and caches keep
our state valid. Jobs run in Forge's order (forge_objects swapped around the extra networks)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from lib_lorastack.formats.hashes import compute_hashes
from tests.helpers.forge import ForgeUI
from tests.helpers.webui import same

HOST = "forge"


@pytest.fixture
def ui(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("STUB_DATA_PATH", str(tmp_path / "data"))
    forge = ForgeUI(tmp_path, HOST)
    yield forge
    forge.close()


def close(a, b) -> bool:
    return torch.allclose(a.images[0].float(), b.images[0].float(), atol=2e-3)


def builtin_merges(ui: ForgeUI) -> int:
    """Weights the built-in merged into the UNet so far (Forge: its LoraLoader; Neo: ModelPatcher.load)."""
    model = ui.model.forge_objects_original.unet.model
    return model.lora_loader.merges if hasattr(model, "lora_loader") else model.merges


def builtin_backups(ui: ForgeUI) -> dict:
    unet = ui.model.forge_objects_original.unet
    return unet.lora_loader.backup if hasattr(unet, "lora_loader") else unet.backup


def builtin_patches(ui: ForgeUI) -> dict:
    unet = ui.model.forge_objects_after_applying_lora.unet
    return unet.lora_patches if hasattr(unet, "lora_patches") else unet.patches


def test_the_host_is_recognised_by_its_modules(ui: ForgeUI) -> None:
    assert ui.host().adapter.name == HOST


def test_one_tag_gives_the_builtins_image_and_a_plain_job_after_is_bit_identical(ui: ForgeUI) -> None:
    base, _ = ui.txt2img("a cat")
    ours, p = ui.txt2img("a cat <lora:char:1>")
    assert not same(base.images[0], ours.images[0])
    sha = compute_hashes(ui.loras / "char.safetensors").sha256[:12]
    assert p.extra_generation_params["Lora hashes"] == f"char: {sha}"  # Forge's whole-file hash, not A1111's addnet
    after, _ = ui.txt2img("a cat")
    assert same(base.images[0], after.images[0])
    # the built-in added no patch and merged nothing while we handled the tags
    assert builtin_patches(ui) == {}
    assert builtin_merges(ui) == 0 and ui.networks.calls["load_networks"] == 0
    ui.set("lorastack_takeover", False)
    builtin, p = ui.txt2img("a cat <lora:char:1>")
    assert "LoRA stack" not in p.extra_generation_params
    assert close(ours, builtin) and builtin_merges(ui) > 0


def test_a_stack_and_a_strength_change_match_the_builtin(ui: ForgeUI) -> None:
    stack, _ = ui.txt2img("a cat <lora:char:1> <lora:Watercolor:0.7>")
    stronger, _ = ui.txt2img("a cat <lora:char:0.5> <lora:Watercolor:0.7>")
    ui.set("lorastack_takeover", False)
    b_stack, _ = ui.txt2img("a cat <lora:char:1> <lora:Watercolor:0.7>")
    b_stronger, _ = ui.txt2img("a cat <lora:char:0.5> <lora:Watercolor:0.7>")
    assert close(stack, b_stack) and close(stronger, b_stronger) and not close(stack, stronger)


def test_forges_kind_of_lora_hash_is_written_and_resolved_on_paste(ui: ForgeUI) -> None:
    import os

    infotext_utils = importlib.import_module("modules.infotext_utils")
    _, p = ui.txt2img("a cat <lora:char:0.8>")
    infotext = ui.processing.create_infotext(p, "a cat <lora:char:0.8>")
    assert compute_hashes(ui.loras / "char.safetensors").sha256[:12] in infotext
    os.rename(ui.loras / "char.safetensors", ui.loras / "char_v2.safetensors")
    ui.networks.list_available_networks()
    assert infotext_utils.parse_generation_parameters(infotext)["Prompt"] == "a cat <lora:char_v2:0.8>"


def test_a_repeated_job_does_no_patch_work(ui: ForgeUI, capsys) -> None:
    ui.txt2img("a cat <lora:char:1> <lora:detail:0.5>")
    writes = ui.engine().stats.weight_writes
    capsys.readouterr()
    ui.txt2img("a cat <lora:char:1> <lora:detail:0.5>", n_iter=2)
    assert ui.engine().stats.weight_writes == writes
    assert "weights written" not in capsys.readouterr().out


def test_a_missing_lora_leaves_the_others_applied(ui: ForgeUI) -> None:
    alone, _ = ui.txt2img("a cat <lora:char:1>")
    with_missing, p = ui.txt2img("a cat <lora:char:1> <lora:no_such_lora:1>")
    assert same(alone.images[0], with_missing.images[0])
    assert "no_such_lora" in p.extra_generation_params["LoRA stack errors"]


def test_lyco_tags_work_although_forges_builtin_has_no_lyco(ui: ForgeUI) -> None:
    lora, _ = ui.txt2img("a cat <lora:char:1>")
    lyco, _ = ui.txt2img("a cat <lyco:char:1>")
    assert same(lora.images[0], lyco.images[0])


def test_a_panel_row_gives_the_tags_image_and_the_conditioning_cache_follows(ui: ForgeUI) -> None:
    tag, _ = ui.txt2img("a cat <lora:char:1>")
    base, _ = ui.txt2img("a cat")
    row, _ = ui.txt2img("a cat", script_args=[{"rows": [{"lora": "char", "te": 1}]}, None])
    assert same(row.images[0], tag.images[0])
    after, _ = ui.txt2img("a cat")  # same prompt as the row's job: the cached conditioning must not be the row's
    assert same(after.images[0], base.images[0])


def test_a_lora_file_rewritten_under_the_same_name_takes_effect_text_encoder_included(ui: ForgeUI) -> None:
    import os

    from tests.helpers.engine_fixtures import subset_targets
    from tests.helpers.host_fixtures import F, write_lora

    before, _ = ui.txt2img("a cat <lora:char:1:0>")  # text encoder only
    path = ui.loras / "char.safetensors"
    stat = path.stat()
    write_lora(ui.loras, "char", subset_targets(F)[::2], seed=11)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after, _ = ui.txt2img("a cat <lora:char:1:0>")  # same prompt: the cached conditioning must not be reused
    assert not same(before.images[0], after.images[0])


def test_device_moves_keep_the_patch_and_the_backup_valid(ui: ForgeUI) -> None:
    base, _ = ui.txt2img("a cat")
    ours, _ = ui.txt2img("a cat <lora:char:1>")
    moves = ui.memory.moves["count"]
    ui.memory.unload_all_models()  # the next job loads the patchers again: every parameter to new storage
    again, _ = ui.txt2img("a cat <lora:char:1>")
    assert ui.memory.moves["count"] > moves and same(ours.images[0], again.images[0])
    ui.memory.unload_all_models()
    after, _ = ui.txt2img("a cat")
    assert same(base.images[0], after.images[0])


def test_checkpoint_switch_drops_our_state_and_applies_on_the_new_model(ui: ForgeUI) -> None:
    ours, _ = ui.txt2img("a cat <lora:char:1>")
    first = ui.model
    ui.switch(ui.other_ckpt)
    other_lora, _ = ui.txt2img("a cat <lora:char:1>")
    assert ui.model is not first and not same(ours.images[0], other_lora.images[0])
    assert first._lorastack_key not in ui.host().session.model_keys()  # the old model's state went with it
    ui.switch(ui.base_ckpt)
    other_plain, _ = ui.txt2img("a cat")
    back, _ = ui.txt2img("a cat <lora:char:1>")
    assert same(ours.images[0], back.images[0]) and not same(back.images[0], other_plain.images[0])


def test_our_state_of_the_old_model_goes_before_forge_loads_the_next(ui: ForgeUI, monkeypatch) -> None:
    import gc
    import weakref

    import backend.loader

    ui.txt2img("a cat <lora:char:1>")
    old = weakref.ref(ui.model)
    held: list[int] = []
    load = backend.loader.forge_loader

    def forge_loader(state_dict):
        gc.collect()
        held.append(len(ui.host().session.model_keys()))
        return load(state_dict)

    monkeypatch.setattr(backend.loader, "forge_loader", forge_loader)
    ui.switch(ui.other_ckpt)
    ui.txt2img("a cat <lora:char:1>")
    assert held == [0]  # nothing of ours kept the old model while the new one loaded
    gc.collect()
    assert old() is None
    ui.sd_models.unload_model_weights()
    assert ui.host().session.model_keys() == []


def test_takeover_on_after_the_builtin_merged_cleans_its_state_first(ui: ForgeUI) -> None:
    alone, _ = ui.txt2img("a cat <lora:detail:1>")
    base, _ = ui.txt2img("a cat")
    ui.set("lorastack_takeover", False)
    ui.txt2img("a cat <lora:char:1>")  # the built-in's clones, hash and merged weights stay behind
    assert builtin_backups(ui)
    ui.set("lorastack_takeover", True)
    again, _ = ui.txt2img("a cat <lora:detail:1>")
    assert same(alone.images[0], again.images[0])
    assert not builtin_backups(ui) and ui.model.current_lora_hash == "[]"
    after, _ = ui.txt2img("a cat")
    assert same(base.images[0], after.images[0])
    ui.set("lorastack_takeover", False)  # the built-in starts afresh: its cache key was reset
    builtin, _ = ui.txt2img("a cat <lora:char:1>")
    ui.set("lorastack_takeover", True)
    ours, _ = ui.txt2img("a cat <lora:char:1>")
    assert close(builtin, ours)


def test_an_unknown_family_goes_to_the_builtin(ui: ForgeUI) -> None:
    ui.switch(ui.sd3_ckpt)
    base, _ = ui.txt2img("a cat")
    with_lora, p = ui.txt2img("a cat <lora:char:1>")
    assert "handed to the built-in" in p.extra_generation_params["LoRA stack errors"]
    assert not same(base.images[0], with_lora.images[0])  # the built-in applied it
    after, _ = ui.txt2img("a cat")  # the built-in removes it again
    assert same(base.images[0], after.images[0])
    ui.switch(ui.base_ckpt)
    plain, _ = ui.txt2img("a cat")
    ours, _ = ui.txt2img("a cat <lora:char:1>")
    assert not same(plain.images[0], ours.images[0])


def test_schedules_switch_at_steps(ui: ForgeUI) -> None:
    base, _ = ui.txt2img("a cat", steps=6)
    always, _ = ui.txt2img("a cat <lora:char:0:1>", steps=6)
    late, _ = ui.txt2img("a cat <lora:char:0:1:start=3>", steps=6)
    assert not same(late.images[0], always.images[0]) and not same(late.images[0], base.images[0])
    after, _ = ui.txt2img("a cat", steps=6)
    assert same(after.images[0], base.images[0])
    # the counter is the one lora-block-weight reads (the progress counter: 0, 0, 1, … at steps 1, 2, 3, …), so on
    # two steps start=2 never reaches the UNet, exactly as with lora-block-weight in the WebUI
    base2, _ = ui.txt2img("a cat", steps=2)
    second, _ = ui.txt2img("a cat <lora:char:0:1:start=2>", steps=2)
    third, _ = ui.txt2img("a cat <lora:char:0:1:start=2>", steps=3)
    base3, _ = ui.txt2img("a cat", steps=3)
    assert same(second.images[0], base2.images[0]) and not same(third.images[0], base3.images[0])


def test_online_mode_wraps_forges_own_linear(ui: ForgeUI) -> None:
    fused, _ = ui.txt2img("a cat <lora:char:1>")
    ui.set("lorastack_mode", "online")
    online, _ = ui.txt2img("a cat <lora:char:1>")
    assert close(fused, online)
    assert ui.engine().stats is not None and any(
        "forward" in m.__dict__ for m in ui.model.forge_objects_original.unet.model.modules()
    )
