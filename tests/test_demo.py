"""The README's main job, end to end (on the touched layers only, to stay quick)."""

from __future__ import annotations

from lib_lorastack.formats.targets import Family
from lib_lorastack.stack.catalog import LoraCatalog
from lib_lorastack.stack.resolve import resolve_request
from lib_lorastack.syntax import parse_prompt
from lib_lorastack.tools.demo import main
from lib_lorastack.tools.examples import ensure_examples


def test_demo_runs_and_verifies(tmp_path, capsys) -> None:
    assert main(["--examples-dir", str(tmp_path), "--unet-only-subset"]) == 0
    out = capsys.readouterr().out
    assert "restore after fused      : bit for bit" in out
    assert "restore after online     : bit for bit" in out
    assert "(agree)" in out
    assert "example_style: block weights BASE=1 IN00=0" in out
    assert "stack doctor" in out and "Stack doctor: SD1, 3 LoRAs" in out
    assert f"heatmap: {tmp_path / 'doctor.png'}" in out and (tmp_path / "doctor.png").read_bytes()[:4] == b"\x89PNG"


def test_resolve_request_reports_missing_and_broken_loras_and_applies_the_rest(tmp_path) -> None:
    ensure_examples(tmp_path)
    (tmp_path / "broken.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{")
    request = parse_prompt("<lora:example_character:0.5> <lora:nosuch:1> <lora:broken:1> <lora:example_detail:1:lbw=NOPE>")
    resolved = resolve_request(request, LoraCatalog(tmp_path), Family.SD1)
    assert [layer.lora.name for layer in resolved.layers] == ["example_character", "example_detail"]
    text = "\n".join(resolved.messages)
    assert "LoRA not found: 'nosuch'" in text
    assert "'broken'" in text and "broken.safetensors" in text
    assert "NOPE" in text
