"""The extension in a stand-in Forge Neo 2.26 (tests/neo_stub): the same job sequences as in Forge
(test_forge_integration.py), against Neo's weight patches (patches_uuid, shared backups) and its sd_models without
load_model_weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.forge import ForgeUI
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
