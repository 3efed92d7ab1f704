"""Small stacks for the doctor, bake and merge tests: SD1 LoRAs on a handful of layers (attention, a 1×1 and a 3×3
conv, a text-encoder layer), correlated pairs, a LoHa, and a WebUI-keyed checkpoint file of the same layers."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from lib_lorastack.formats.loader import parse_state_dict
from lib_lorastack.formats.lora import ParsedLora
from lib_lorastack.formats.targets import Family, Target
from lib_lorastack.formats.writers import kohya_key, random_lora_factors, target_shape
from lib_lorastack.tools.skeleton import build_skeleton
from tests.helpers.lora_writers import lycoris_loha_for_targets, targetable

FAMILY = Family.SD1
# IN01 attention (+ its 1×1 proj_in conv), IN04's 3×3 conv, OUT03 attention, one text-encoder layer
LAYERS = (
    "input_blocks.1.1.transformer_blocks.0.attn1.",
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
    "input_blocks.1.1.proj_in",
    "input_blocks.4.0.in_layers.2",
    "output_blocks.3.1.transformer_blocks.0.attn1.to_q",
    "output_blocks.3.1.transformer_blocks.0.attn1.to_v",
    "encoder.layers.0.self_attn.q_proj",
    "encoder.layers.0.mlp.fc1",
)


def doctor_targets() -> list[Target]:
    return [t for t in targetable(FAMILY) if any(s in t.module for s in LAYERS)]


def factors(targets: list[Target], rank: int, seed: int, std: float = 0.1) -> dict[Target, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {t: random_lora_factors(target_shape(t, FAMILY), rank, g, std) for t in targets}


def kohya_sd(fs: dict[Target, tuple[torch.Tensor, torch.Tensor]], alpha: float | None) -> dict[str, torch.Tensor]:
    sd = {}
    for t, (up, down) in fs.items():
        key = kohya_key(t, FAMILY)
        sd[f"{key}.lora_up.weight"] = up.contiguous()
        sd[f"{key}.lora_down.weight"] = down.contiguous()
        if alpha is not None:
            sd[f"{key}.alpha"] = torch.tensor(float(alpha))
    return sd


def lora(name: str, fs, alpha: float | None = 2.0, metadata: dict | None = None) -> ParsedLora:
    return parse_state_dict(kohya_sd(fs, alpha), family=FAMILY, name=name, metadata=metadata or {})


def correlated(fs, seed: int, mix: float, sign: float = 1.0):
    """Factors whose change is ``sign·(mix·ΔW_fs + (1−mix)·independent)`` direction-wise: the same up and down
    factors, concatenated with fresh ones, so that the column and row spaces overlap too."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t, (up, down) in fs.items():
        new_up = torch.randn(up.shape, generator=g) * up.std()
        new_down = torch.randn(down.shape, generator=g) * down.std()
        out[t] = (torch.cat([sign * mix * up, (1 - mix) * new_up], 1), torch.cat([down, new_down], 0))
    return out


def loha(name: str, targets: list[Target], seed: int, rank: int = 2) -> ParsedLora:
    return parse_state_dict(lycoris_loha_for_targets(FAMILY, targets, rank=rank, seed=seed), family=FAMILY, name=name)


def unit_delta(lora: ParsedLora, target: Target, dtype=torch.float64) -> torch.Tensor:
    """The brute-force ΔW of one LoRA on one target at strength 1, as [out, fan_in]."""
    shape = target_shape(target, FAMILY)
    return lora.modules[target].update(torch.zeros(shape, dtype=dtype), dtype=dtype).weight.reshape(shape[0], -1)


def model_and_checkpoint(path: Path, *, dtype=torch.float16, seed: int = 0) -> dict[str, torch.Tensor]:
    """A WebUI-keyed SD1 checkpoint of the doctor layers plus untouched neighbours and a VAE-like tensor."""
    keep = (*LAYERS, "input_blocks.1.1.norm", "layers.0.layer_norm1", "input_blocks.4.0.in_layers.0")
    model = build_skeleton(FAMILY, dtype=dtype, select=lambda n: any(s in n for s in keep), seed=seed)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd["first_stage_model.decoder.conv_in.weight"] = torch.randn(4, 4, 3, 3).to(dtype)
    sd["model.diffusion_model.some_buffer"] = torch.arange(10, dtype=torch.int64)
    save_file(sd, str(path), metadata={"format": "pt", "note": "test checkpoint"})
    return sd
