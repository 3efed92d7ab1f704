"""``python -m lib_lorastack inspect`` on the examples and on files made by PEFT and by lycoris."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lib_lorastack.formats.files import LoraFile
from lib_lorastack.tools.cli import main
from lib_lorastack.tools.examples import ensure_examples

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> list[Path]:
    return ensure_examples(tmp_path_factory.mktemp("examples"))


def test_examples_are_deterministic(examples, tmp_path: Path) -> None:
    from lib_lorastack.formats.hashes import compute_hashes

    again = ensure_examples(tmp_path)
    assert [compute_hashes(p) for p in again] == [compute_hashes(p) for p in examples]  # whole files, byte for byte
    assert all(p.stat().st_size < 10_000_000 for p in again)
    assert LoraFile(again[0]).metadata["ss_output_name"] == "example_character"
    before = again[1].stat().st_mtime_ns
    assert ensure_examples(tmp_path) == again and again[1].stat().st_mtime_ns == before  # written once
    again[1].write_bytes(b"stale")
    ensure_examples(tmp_path)
    assert compute_hashes(again[1]) == compute_hashes(examples[1])  # an outdated or broken file is rewritten


def test_inspect_examples_json(examples, capsys) -> None:
    assert main(["inspect", "--json", *map(str, examples)]) == 0
    reports = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in reports}
    char = by_name["example_character"]
    assert char["family"] == "sd1" and char["format"] == "kohya"
    assert char["modules"] == {"te": 48, "unet": 128}
    assert char["rank"] == [8, 8] and char["alpha"] == [4.0, 4.0]
    assert char["trigger_words"][0] == "lsx_girl"
    assert len(char["hashes"]["lora_short"]) == 12
    style = by_name["example_style"]["adapters"]
    assert set(style) == {"locon", "lora"} and sum(style.values()) == 243
    assert by_name["example_style"]["rank"] == [4, 8] and by_name["example_style"]["alpha"] == [2.0, 8.0]
    assert by_name["example_detail"]["adapters"] == {"loha": 80}
    assert set(by_name["example_detail"]["blocks"]) == {"M00", *[f"OUT{i:02d}" for i in range(3, 12)]}
    assert list(by_name["example_detail"]["ldm_blocks"]) == ["middle_block", *[f"output_blocks.{i}" for i in range(3, 12)]]
    assert char["ldm_blocks"]["text encoder"] == 48 and sum(char["ldm_blocks"].values()) == 176


def test_inspect_text_and_exit_codes(examples, tmp_path: Path) -> None:
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    nan = tmp_path / "nan.safetensors"
    sd = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.full((320, 4, 1, 1), float("nan")),
          "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320, 1, 1),
          "lora_unet_down_blocks_0_attentions_0_proj_out.lora_up.weight": torch.zeros(320, 4, 1, 1),
          "lora_unet_down_blocks_0_attentions_0_proj_out.lora_down.weight": torch.zeros(4, 320, 1, 1)}  # fmt: skip
    save_file(sd, str(nan))
    cmd = [sys.executable, "-m", "lib_lorastack", "inspect"]
    ok = subprocess.run([*cmd, str(examples[0])], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "family: SD1" in ok.stdout and "problems     : none" in ok.stdout
    warn = subprocess.run([*cmd, str(nan)], capture_output=True, text=True, cwd=ROOT)
    assert warn.returncode == 1 and "NaN" in warn.stdout
    fail = subprocess.run([*cmd, str(examples[0]), str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert fail.returncode == 2 and "UNUSABLE" in fail.stdout and "broken.safetensors" in fail.stdout


def test_inspect_a_peft_made_file(tmp_path: Path, capsys) -> None:
    """PEFT injects into a diffusers attention block of SD1.5's real size, named as in the full UNet."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    block = Transformer2DModel(num_attention_heads=8, attention_head_dim=40, in_channels=320, cross_attention_dim=768)
    unet = torch.nn.Module()
    unet.down_blocks = torch.nn.ModuleList([torch.nn.Module()])
    unet.down_blocks[0].attentions = torch.nn.ModuleList([block])
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2"])
    unet = inject_adapter_in_model(config, unet)
    sd = {f"unet.{k}": v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    path = tmp_path / "peft.safetensors"
    save_file(sd, str(path), metadata={"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 8})})
    assert main(["inspect", "--json", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)[0]
    assert report["format"] == "diffusers-peft" and report["family"] == "sd1"
    assert report["modules"] == {"unet": 10} and report["blocks"] == {"IN01": 10}
    assert report["rank"] == [4, 4] and report["alpha"] == [8.0, 8.0]


def test_inspect_a_lycoris_made_file(tmp_path: Path, capsys) -> None:
    from lycoris import create_lycoris

    from lib_lorastack.formats.model_tables import load_table
    from lib_lorastack.tools.skeleton import build_skeleton

    # A model with the WebUI's real names and shapes (a slice of SD1.5's UNet), wrapped by lycoris' own network.
    unet = build_skeleton("sd1", dtype=torch.float32, select=lambda n: ".input_blocks.1.1.transformer_blocks" in n)
    root = unet.model.diffusion_model
    net = create_lycoris(root, 1.0, linear_dim=4, linear_alpha=2, algo="loha")
    net.apply_to()
    path = tmp_path / "lyco.safetensors"
    net.save_weights(str(path), torch.float32, None)
    keys = list(json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")]))
    assert any("hada_w1_a" in k for k in keys)
    capsys.readouterr()
    code = main(["inspect", "--json", "--family", "sd1", str(path)])
    report = json.loads(capsys.readouterr().out)[0]
    assert load_table("sd1")
    assert report["ok"], report["error"]
    assert report["adapters"].get("loha", 0) > 0, report
    assert code in (0, 1)


def test_cli_usage_and_missing_demo(monkeypatch, capsys) -> None:
    assert main(["--help"]) == 0 and "inspect" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    monkeypatch.setitem(sys.modules, "lib_lorastack.tools.demo", None)  # import of it fails as if absent
    assert main(["demo"]) == 2
    assert "'demo' command is not available" in capsys.readouterr().err
