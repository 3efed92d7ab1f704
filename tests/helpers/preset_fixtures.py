"""Small LoRA files and presets for the preset tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from lib_lorastack.presets.model import Preset, PresetEntry


def tiny_lora(path: Path, alias: str | None = None, seed: int = 0) -> Path:
    """A kohya-keyed file with one tensor; ``seed`` changes its bytes (so its hash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {"lora_unet_x.lora_up.weight": torch.randn(2, 1, generator=g)}
    save_file(tensors, str(path), metadata={"ss_output_name": alias} if alias else None)
    return path


def full_preset(name: str = "brand") -> Preset:
    """A preset with every field set to something other than its default."""
    return Preset(
        name=name,
        entries=(
            PresetEntry(
                name="Alice",
                te=0.8,
                unet=0.6,
                sha256="ab" * 32,
                addnet="cd" * 32,
                file="alice_v2.safetensors",
                alias="Alice",
                dyn=8,
                lbw="1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,X",
                lbwe="ATTNDEEPOFF",
                x=0.3,
                start=2,
                stop=20,
                enabled=False,
            ),
            PresetEntry(name="style", te=0.5, unet=0.5, lbw="OUTALL"),
        ),
        description="Brand A: character + style\nline two",
        triggers="lsx_girl, red scarf",
        negative_triggers="blurry, lowres",
        scale=0.9,
        family="sdxl",
        created="2025-01-02T03:04:05+00:00",
        updated="2025-02-03T04:05:06+00:00",
    )
