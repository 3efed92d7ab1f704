"""``python -m lib_lorastack doctor|bake|merge``: stacks from tags and from files, JSON, the PNG, and a clear message
with exit status 2 (never a traceback) for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from lib_lorastack.formats.loader import load_lora
from lib_lorastack.formats.targets import Family
from lib_lorastack.tools.cli import main
from tests.helpers.doctor_fixtures import FAMILY, correlated, doctor_targets, factors, kohya_sd, model_and_checkpoint
from tests.helpers.lora_writers import kohya_lora_for_targets

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("loras")
    fa = factors(doctor_targets(), rank=4, seed=1)
    meta = {"ss_output_name": "Char Alias", "ss_tag_frequency": json.dumps({"5_c": {"lsx": 4}})}
    save_file(kohya_sd(fa, 4.0), str(d / "char.safetensors"), metadata=meta)
    save_file(kohya_sd(correlated(fa, seed=2, mix=0.9), 8.0), str(d / "style.safetensors"))
    xl = kohya_lora_for_targets(
        Family.SDXL,
        [
            "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k",
            "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_v",
        ],
    )
    save_file(xl, str(d / "xl.safetensors"))
    (d / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken!")
    model_and_checkpoint(d / "base.ckpt.safetensors")
    return d


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_doctor_json_and_png_from_tags(folder, capsys, tmp_path) -> None:
    png = tmp_path / "heat.png"
    code, out, err = run(
        capsys, "doctor", "--lora-dir", str(folder), "a prompt <lora:char:0.8> <lora:style:0.7:lbw=INALL>", "--json",
        "--png", str(png), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["family"] == "sd1" and [x["name"] for x in doc["loras"]] == ["char", "style"]
    assert doc["blocks"]["IN01"]["cosine"][0][1] > 0.5
    assert any(f["kind"] == "reinforce" for f in doc["findings"])
    assert doc["png"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "OUT03" not in doc["blocks"] or doc["blocks"]["OUT03"]["norms"][1] == 0  # INALL zeroes the out blocks


def test_doctor_text_from_files_with_weights_and_base(folder, capsys) -> None:
    code, out, err = run(
        capsys, "doctor", f"{folder / 'char.safetensors'}:0.8", f"{folder / 'style.safetensors'}:0.5:lbw=OUTALL",
        "--base", str(folder / "base.ckpt.safetensors"), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "Stack doctor: SD1, 2 LoRAs" in out and "as % of ‖W0‖" in out
    assert "<lora:style:0.5:lbw=OUTALL>" in out


def test_bake_and_merge_write_loadable_loras(folder, capsys, tmp_path) -> None:
    out = tmp_path / "baked.safetensors"
    code, text, err = run(capsys, "bake", str(folder / "char.safetensors"), f"{folder / 'style.safetensors'}:0.5", "--out", str(out))
    assert code == 0, err
    assert "exact: every layer's change is the stack's change" in text
    assert len(load_lora(out, FAMILY).modules) == len(doctor_targets())
    merged = tmp_path / "merged.safetensors"
    code, text, err = run(
        capsys, "merge", "--lora-dir", str(folder), "<lora:char> <lora:style:0.5>", "--out", str(merged),
        "--method", "dare_ties", "--density", "0.3", "--seed", "5", "--rank", "4", "--json", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(text)
    assert doc["ranks"] == [4] and doc["method"] == "dare_ties"
    ckpt = tmp_path / "fused.safetensors"
    code, text, err = run(
        capsys, "bake", str(folder / "char.safetensors"), "--base", str(folder / "base.ckpt.safetensors"),
        "--method", "checkpoint", "--out", str(ckpt), "--quiet",
    )  # fmt: skip
    assert code == 0, err and ckpt.is_file()
    assert f"{len(doctor_targets())} tensors changed" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["doctor", "--lora-dir", "{d}", "<lora:nosuch:1>"], "error: LoRA not found: 'nosuch'"),
        (["doctor", "<lora:char:1>"], "need --lora-dir DIR"),
        (["doctor", "{d}/missing.safetensors"], "file not found: {d}/missing.safetensors"),
        (["doctor", "{d}/junk.safetensors"], "junk.safetensors"),
        (["doctor", "{d}/char.safetensors", "--family", "sdxl"], "not for the SDXL model in use"),
        (["doctor", "{d}/char.safetensors", "{d}/xl.safetensors"], "LoRA 'xl'"),
        (["doctor", "{d}/char.safetensors:abc"], "TE strength 'abc' is not a number"),
        (["doctor", "{d}/char.safetensors:1:lbw=1,2,3"], "block vector has 3 values"),
        (["doctor", "{d}/char.safetensors", "--base", "{d}/style.safetensors"], "is not an SD1, SD2, SDXL or Flux checkpoint"),
        (["doctor", "{d}/char.safetensors", "--base", "{d}/nothing.safetensors"], "nothing.safetensors"),
        (["bake", "{d}/char.safetensors", "--out", "{d}/char.safetensors"], "is one of the inputs"),
        (["bake", "{d}/char.safetensors", "--out", "{d}/x.safetensors", "--method", "checkpoint"], "needs --base"),
        (["bake", "{d}/char.safetensors", "--out", "{d}/x.txt"], "must end in .safetensors"),
        (["doctor"], "the stack is empty"),
    ],
)
def test_bad_input_is_named_with_exit_status_2(folder, capsys, argv, message) -> None:
    code, _, err = run(capsys, *(a.format(d=folder) for a in argv))
    assert code == 2
    assert message.format(d=folder) in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bake", "x.safetensors", "--out", "y.safetensors", "--rank", "0"], "argument --rank: 0 must be at least 1"),
        (["merge", "x.safetensors", "--out", "y.safetensors", "--density", "1.5"], "argument --density: 1.5 must be in (0, 1]"),
        (["merge", "x.safetensors", "--out", "y.safetensors", "--seed", "x"], "argument --seed: 'x' is not a whole number"),
        (["merge", "x.safetensors", "--out", "y.safetensors", "--method", "magic"], "argument --method: invalid choice"),
    ],
)
def test_bad_numbers_are_refused_by_the_argument_parser(capsys, argv, message) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_checkpoint_lacking_a_key_is_named(folder, capsys, tmp_path) -> None:
    sd = model_and_checkpoint(tmp_path / "full.safetensors")
    key = "model.diffusion_model.input_blocks.4.0.in_layers.2.weight"
    del sd[key]
    save_file(sd, str(tmp_path / "partial.safetensors"))
    out = tmp_path / "out.safetensors"
    code, _, err = run(
        capsys, "bake", str(folder / "char.safetensors"), "--base", str(tmp_path / "partial.safetensors"),
        "--method", "checkpoint", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 2 and f"has no tensor '{key}'" in err and not out.exists()


def test_commands_are_listed_and_run_as_a_module(folder) -> None:
    r = subprocess.run([sys.executable, "-m", "lib_lorastack"], cwd=ROOT, capture_output=True, text=True)
    assert all(c in r.stdout for c in ("doctor", "bake", "merge"))
    r = subprocess.run(
        [sys.executable, "-m", "lib_lorastack", "doctor", str(folder / "char.safetensors"), "--json", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["loras"][0]["name"] == "char"
