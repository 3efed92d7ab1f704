"""Reading LoRA files: every kind of bad file gets its typed error naming the file and the fault."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lib_lorastack.errors import (
    CorruptFileError,
    NonFiniteError,
    NotSafetensorsError,
    NoUsableKeysError,
    TensorShapeError,
    UnsupportedModelError,
)
from lib_lorastack.formats.files import LoraFile
from lib_lorastack.formats.loader import load_lora
from lib_lorastack.formats.targets import Family
from tests.helpers.lora_writers import kohya_lora, targetable

SD1_TARGETS = [t for t in targetable(Family.SD1) if "input_blocks.1.1" in t.module][:4]


def write(path: Path, sd: dict, metadata: dict | None = None) -> Path:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def good(tmp_path: Path, **kw) -> Path:
    return write(tmp_path / "good.safetensors", kohya_lora(Family.SD1, SD1_TARGETS, **kw))


def test_a_good_file(tmp_path: Path) -> None:
    meta = {"ss_output_name": "nice", "ss_tag_frequency": json.dumps({"a": {"x": 3, "y": 9}, "b": {"x": 7}})}
    path = write(tmp_path / "file.safetensors", kohya_lora(Family.SD1, SD1_TARGETS), meta)
    f = LoraFile(path)
    assert f.alias == "nice" and f.stem == "file"
    assert f.trigger_words() == ["x", "y"]
    assert f.shapes[next(iter(f.shapes))] == tuple(f.tensor(next(iter(f.shapes))).shape)
    parsed = load_lora(path)
    assert parsed.family is Family.SD1 and parsed.alias == "nice" and len(parsed.modules) == 4


def test_pickled_files_are_refused_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (marker.write_text, ("x",))

    for name in ("evil.pt", "evil.ckpt", "evil.safetensors"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(Evil()))
        with pytest.raises(NotSafetensorsError) as info:
            load_lora(path)
        assert name in str(info.value)
    zipped = tmp_path / "torch_save.safetensors"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(Evil()))
    with pytest.raises(NotSafetensorsError, match="zip"):
        LoraFile(zipped)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda b: b[:5], "too short"),
        (lambda b: struct.pack("<Q", 10**12) + b[8:], "header claims"),
        (lambda b: b[:8] + b"{not json" + b[17:], "not valid JSON"),
        (lambda b: b[:-7], "truncated"),
        (lambda b: b"", "too short"),
    ],
    ids=["short", "huge-header", "bad-json", "truncated-data", "empty"],
)
def test_corrupt_files(tmp_path: Path, mutate, fragment: str) -> None:
    raw = good(tmp_path).read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(mutate(raw))
    with pytest.raises(CorruptFileError) as info:
        load_lora(bad)
    assert fragment in str(info.value) and "bad.safetensors" in str(info.value)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.safetensors"
    path.write_bytes(bytes(range(256)) * 10)
    with pytest.raises((CorruptFileError, NotSafetensorsError)):
        load_lora(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CorruptFileError, match="cannot be read"):
        load_lora(tmp_path / "absent.safetensors")


def test_rank_mismatch_is_a_shape_error(tmp_path: Path) -> None:
    sd = kohya_lora(Family.SD1, SD1_TARGETS)
    key = next(k for k in sd if k.endswith("lora_down.weight"))
    sd[key] = sd[key][:2]
    path = write(tmp_path / "rank.safetensors", sd)
    with pytest.raises(TensorShapeError, match="rank mismatch"):
        load_lora(path, Family.SD1, strict=True)
    lenient = load_lora(path, Family.SD1)
    assert len(lenient.modules) == 3 and any("rank mismatch" in p for p in lenient.problems)


def test_shape_not_fitting_the_layer(tmp_path: Path) -> None:
    sd = kohya_lora(Family.SD1, SD1_TARGETS)
    key = next(k for k in sd if k.endswith("lora_down.weight"))
    sd[key] = torch.randn(sd[key].shape[0], 7)
    with pytest.raises(TensorShapeError, match="does not fit"):
        load_lora(write(tmp_path / "shape.safetensors", sd), Family.SD1, strict=True)


def test_nan_and_inf(tmp_path: Path) -> None:
    sd = kohya_lora(Family.SD1, SD1_TARGETS)
    key = next(k for k in sd if k.endswith("lora_up.weight"))
    sd[key][0, 0] = float("nan")
    path = write(tmp_path / "nan.safetensors", sd)
    with pytest.raises(NonFiniteError, match="NaN"):
        load_lora(path, strict=True)
    lenient = load_lora(path)
    assert len(lenient.modules) == 3 and any("NaN" in p for p in lenient.problems)


def test_no_usable_key(tmp_path: Path) -> None:
    path = write(tmp_path / "none.safetensors", {"some.random.tensor": torch.zeros(3)})
    with pytest.raises(NoUsableKeysError) as info:
        load_lora(path)
    assert "none.safetensors" in str(info.value)
    unknown = write(tmp_path / "unknown.safetensors", {"lora_unet_not_a_layer.lora_up.weight": torch.zeros(4, 2),
                                                        "lora_unet_not_a_layer.lora_down.weight": torch.zeros(2, 4)})
    with pytest.raises(NoUsableKeysError, match="matches a layer"):
        load_lora(unknown)


@pytest.mark.parametrize(
    ("keys", "meta", "error", "match"),
    [
        # Flux is supported (tests/test_flux_formats.py): these names are Flux layers, their shapes are not
        (["lora_unet_double_blocks_0_img_attn_qkv"], {}, NoUsableKeysError, "layer of the flux model"),
        (["lora_unet_single_blocks_3_linear1"], {}, NoUsableKeysError, "layer of the flux model"),
        (["lora_unet_x"], {"modelspec.architecture": "flux-1-dev/lora"}, NoUsableKeysError, "layer of the flux model"),
        (["lora_unet_joint_blocks_0_x_block_attn_qkv"], {}, UnsupportedModelError, "SD3.*not supported yet"),
    ],
)
def test_flux_is_recognised_and_sd3_refused(tmp_path: Path, keys, meta, error, match) -> None:
    sd = {}
    for k in keys:
        sd[f"{k}.lora_up.weight"] = torch.zeros(4, 2)
        sd[f"{k}.lora_down.weight"] = torch.zeros(2, 4)
    with pytest.raises(error, match=match):
        load_lora(write(tmp_path / "other.safetensors", sd, meta))


def test_wrong_base_model(tmp_path: Path) -> None:
    xl_attention = [t for t in targetable(Family.SDXL) if ".attn2." in t.module][:20]
    sdxl = write(tmp_path / "xl.safetensors", kohya_lora(Family.SDXL, xl_attention))
    assert load_lora(sdxl).family is Family.SDXL
    with pytest.raises(UnsupportedModelError, match="LoRA for SDXL, not for the SD1 model"):
        load_lora(sdxl, Family.SD1)
    sd1 = good(tmp_path)
    with pytest.raises(UnsupportedModelError, match="LoRA for SD1"):
        load_lora(sd1, Family.SDXL)


def test_family_detection_by_shape(tmp_path: Path) -> None:
    sd2_targets = [t for t in targetable(Family.SD2) if "attn2.to_k" in t.module or "resblocks.0.mlp" in t.module]
    path = write(tmp_path / "sd2.safetensors", kohya_lora(Family.SD2, sd2_targets))
    assert load_lora(path).family is Family.SD2


def test_unmatched_keys_are_reported_by_name(tmp_path: Path) -> None:
    sd = kohya_lora(Family.SD1, SD1_TARGETS)
    sd["lora_unet_nonexistent_layer.lora_up.weight"] = torch.zeros(4, 2)
    sd["lora_unet_nonexistent_layer.lora_down.weight"] = torch.zeros(2, 4)
    sd["bundle_emb.x.string_to_param.*"] = torch.zeros(1, 768)
    sd["stray"] = torch.zeros(1)
    parsed = load_lora(write(tmp_path / "extra.safetensors", sd))
    reasons = {u.key: u.reason for u in parsed.unmatched}
    assert "no layer of the sd1 model" in reasons["lora_unet_nonexistent_layer"]
    assert "textual-inversion" in reasons["bundle_emb.x.string_to_param.*"]
    assert "not a LoRA module key" in reasons["stray"]
