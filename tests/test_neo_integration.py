"""The extension in a stand-in Forge Neo 2.26 (tests/neo_stub): the same job sequences as in Forge
(test_forge_integration.py), against Neo's weight patches (patches_uuid, shared backups) and its sd_models without
load_model_weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.forge import ForgeUI
from tests.helpers.webui import same
from tests.test_forge_integration import *  # noqa: F403 (the same sequences, run here against the Neo stand-in)
from tests.test_forge_integration import builtin_backups

HOST = "neo"


@pytest.fixture
def ui(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("STUB_DATA_PATH", str(tmp_path / "data"))
    neo = ForgeUI(tmp_path, HOST)
    yield neo
    neo.close()


def test_the_host_is_recognised_by_its_modules(ui: ForgeUI) -> None:
    assert ui.host().adapter.name == "neo"
    assert not hasattr(ui.sd_models, "load_model_weights")


def test_neo_never_unpatches_over_our_weights(ui: ForgeUI) -> None:
    base, _ = ui.txt2img("a cat")
    ui.txt2img("a cat <lora:char:1>")
    unet = ui.model.forge_objects_original.unet
    assert unet.patches == {} and unet.model.current_weight_patches_uuid == unet.patches_uuid
    assert builtin_backups(ui) == {}
    ui.txt2img("a cat")
    after, _ = ui.txt2img("a cat")
    assert after.images[0].equal(base.images[0])


# --------------------------------------------------------------------- the conditioning cache (issue 14, H1)
@pytest.fixture(params=["forge", "neo"])
def either(request, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("STUB_DATA_PATH", str(tmp_path / "data"))
    host = ForgeUI(tmp_path, request.param)
    yield host
    host.close()


def text_encoder_runs(ui: ForgeUI) -> list[int]:
    """A counter of the text encoder's runs (the stand-in encodes through this one layer)."""
    from modules.processing import TE_LAYER

    layer = dict(ui.model.forge_objects_original.clip.cond_stage_model.named_modules())[TE_LAYER]
    runs = [0]
    layer.register_forward_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    return runs


def test_the_job_after_a_change_of_ours_reuses_the_conditioning_it_cached(either: ForgeUI) -> None:
    """Measured in the real Neo 2.26: after each job of ours that changed weights, the next job encoded its prompt
    again, a repeated one too (clear_prompt_cache had bound a new list to the job, apart from the class's)."""
    ui = either
    runs = text_encoder_runs(ui)
    first, _ = ui.txt2img("a cat <lora:char:1>")
    assert runs[0] == 1
    repeat, _ = ui.txt2img("a cat <lora:char:1>")
    assert runs[0] == 1 and same(repeat.images[0], first.images[0])
    ui.txt2img("a cat")  # restores: the prompt differs, encoded again
    ui.txt2img("a cat")
    assert runs[0] == 2


def test_a_conditioning_cached_before_a_change_is_not_reused_after_it(either: ForgeUI) -> None:
    ui = either
    base, _ = ui.txt2img("a cat")
    row = [{"rows": [{"lora": "char", "te": 1, "unet": 0}]}, None]
    with_row, _ = ui.txt2img("a cat", script_args=row)  # same prompt, other text-encoder weights
    again, _ = ui.txt2img("a cat", script_args=row)
    assert not same(with_row.images[0], base.images[0])
    assert same(again.images[0], with_row.images[0])
    after, _ = ui.txt2img("a cat")
    assert same(after.images[0], base.images[0])


def test_a_repeated_panel_job_reuses_its_conditioning_and_a_changed_one_does_not(either: ForgeUI) -> None:
    ui = either
    runs = text_encoder_runs(ui)
    rows = [{"rows": [{"lora": "char", "te": 1}]}, None]
    first, _ = ui.txt2img("a cat", script_args=rows)
    again, _ = ui.txt2img("a cat", script_args=rows)
    assert runs[0] == 1 and same(again.images[0], first.images[0])
    weaker, _ = ui.txt2img("a cat", script_args=[{"rows": [{"lora": "char", "te": 0.5}]}, None])
    assert runs[0] == 2 and not same(weaker.images[0], first.images[0])
    tag, _ = ui.txt2img("a cat <lora:char:1>")
    assert same(tag.images[0], first.images[0])


class _Processing:  # the shape of A1111's, Forge's and Neo's jobs: caches on the defining class, bound per job
    cached_c = [None, None]  # noqa: RUF012
    cached_uc = [None, None]  # noqa: RUF012

    def __init__(self) -> None:
        self.cached_c = _Processing.cached_c
        self.cached_uc = _Processing.cached_uc


class _Txt2Img(_Processing):
    cached_hr_c = [None, None]  # noqa: RUF012
    cached_hr_uc = [None, None]  # noqa: RUF012

    def __init__(self) -> None:
        super().__init__()
        self.cached_hr_c = _Txt2Img.cached_hr_c
        self.cached_hr_uc = _Txt2Img.cached_hr_uc


def test_forgetting_conditionings_empties_the_lists_the_next_job_reads_hires_included(ui: ForgeUI) -> None:
    from lorastack_webui.tags import forget_conditionings

    for name in ("cached_c", "cached_uc"):
        getattr(_Processing, name)[:] = [("a cat",), "old conditioning"]
    for name in ("cached_hr_c", "cached_hr_uc"):
        getattr(_Txt2Img, name)[:] = [("a cat",), "old hires conditioning"]
    p = _Txt2Img()
    p.cached_uc = [("a cat",), "a list of this job's alone"]  # as left by the host's own clear_prompt_cache
    forget_conditionings(p)
    homes = {"cached_c": _Processing, "cached_uc": _Processing, "cached_hr_c": _Txt2Img, "cached_hr_uc": _Txt2Img}
    for name, home in homes.items():
        assert getattr(home, name) == [None, None], name
        assert getattr(p, name) is getattr(home, name), name  # what this job caches, the next job finds
    assert "cached_c" not in vars(_Txt2Img)  # the base class's list is the one jobs bind, not a new one on the subclass


# --------------------------------------------------------------------- fp8 storage (issue 14, H2)
FP8_NOTE = "UNet stored as float8_e4m3fn: online (a fused change would be rounded to 8 bits)"


def store_unet_in_fp8(ui: ForgeUI) -> dict[str, torch.Tensor]:
    """What Forge's "Diffusion in Low Bits" float8-e4m3fn gives: the UNet's Linear weights stored in fp8 (each layer
    casts at its forward), ``storage_dtype`` saying so. The fp8 weights, to compare their bytes later."""
    unet = ui.model.forge_objects_original.unet.model
    stored = {}
    for name, module in unet.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and weight.dim() == 2:
            weight.data = weight.data.to(torch.float8_e4m3fn)
            stored[name] = weight
    unet.storage_dtype = torch.float8_e4m3fn
    return stored


@pytest.mark.parametrize("mode", ["auto", "fused"])
def test_an_fp8_unet_goes_online_the_job_says_why_and_its_bytes_stay(either: ForgeUI, mode: str, capsys) -> None:
    ui = either
    ui.set("lorastack_mode", mode)
    stored = store_unet_in_fp8(ui)
    before = {n: w.detach().view(torch.uint8).clone() for n, w in stored.items()}
    base, _ = ui.txt2img("a cat")
    one, p = ui.txt2img("a cat <lora:char:1>")
    assert p.extra_generation_params["LoRA stack mode"] == FP8_NOTE  # the default "auto" said nothing before
    assert FP8_NOTE in capsys.readouterr().out and FP8_NOTE in ui.host().last_job
    assert "online" in set(ui.engine().patched().values())
    assert all(torch.equal(w.detach().view(torch.uint8), before[n]) for n, w in stored.items())  # online: never written
    weaker, _ = ui.txt2img("a cat <lora:char:0.4>")
    after, _ = ui.txt2img("a cat")
    assert not same(one.images[0], base.images[0]) and not same(weaker.images[0], one.images[0])
    assert same(after.images[0], base.images[0])
    assert all(torch.equal(w.detach().view(torch.uint8), before[n]) for n, w in stored.items())


def test_a_job_that_skips_extra_networks_encodes_without_our_text_encoder_patch(either: ForgeUI) -> None:
    """Its cache key (the prompt and its parsed tags) is the last LoRA job's: that conditioning had our TE patch in."""
    ui = either
    te_only = "a cat <lora:char:1:0>"
    base, _ = ui.txt2img("a cat")
    with_lora, _ = ui.txt2img(te_only)
    assert not same(with_lora.images[0], base.images[0])
    skipped, _ = ui.txt2img(te_only, disable_extra_networks=True)
    assert same(skipped.images[0], base.images[0])
