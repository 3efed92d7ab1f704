"""Panel defaults from a LoRA's own data: base model, preferred weight, trigger words."""

from __future__ import annotations

import json
from pathlib import Path

from lib_lorastack.formats.targets import Family
from lib_lorastack.host.library import family_of_metadata, lora_defaults


def test_family_as_the_cards_decide_it() -> None:
    assert family_of_metadata({"ss_base_model_version": "sdxl_base_v1-0"}) is Family.SDXL
    assert family_of_metadata({"ss_v2": "True"}) is Family.SD2
    assert family_of_metadata({"ss_network_dim": "4"}) is Family.SD1
    assert family_of_metadata({}) is None


def test_preferred_weight_and_activation_text_from_the_sidecar(tmp_path: Path) -> None:
    lora = tmp_path / "char.safetensors"
    tags = {"ss_tag_frequency": json.dumps({"10_x": {"red scarf": 3, "lsx_girl": 9, "smile": 1}})}
    assert lora_defaults(lora, tags) == (None, "lsx_girl, red scarf, smile")
    (tmp_path / "char.json").write_text(json.dumps({"preferred weight": 0.7, "activation text": "lsx_girl, green eyes"}))
    assert lora_defaults(lora, tags) == (0.7, "lsx_girl, green eyes")
    (tmp_path / "char.json").write_text(json.dumps({"preferred weight": 0, "activation text": ""}))
    assert lora_defaults(lora, tags) == (None, "lsx_girl, red scarf, smile")
    (tmp_path / "char.json").write_text("{broken")
    assert lora_defaults(lora, {}) == (None, "")
