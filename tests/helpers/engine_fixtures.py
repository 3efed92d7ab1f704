"""Small WebUI-named models and LoRAs for engine tests."""

from __future__ import annotations

import torch

from lib_lorastack.engine import resolve_modules
from lib_lorastack.formats.loader import parse_state_dict
from lib_lorastack.formats.lora import ParsedLora
from lib_lorastack.formats.targets import Family, Target
from lib_lorastack.tools.skeleton import build_skeleton
from tests.helpers.lora_writers import kohya_lora, targetable

SD1_SUBSET = ("input_blocks.1.", "middle_block.1.proj", "output_blocks.3.0.", "layers.0.", "input_blocks.0.0")
SD2_SUBSET = ("input_blocks.1.1.transformer_blocks", "resblocks.0.", "resblocks.1.")


def small_model(family: Family = Family.SD1, dtype: torch.dtype = torch.float32, subset=SD1_SUBSET, seed: int = 0):
    model = build_skeleton(family, dtype=dtype, select=lambda n: any(s in n for s in subset), seed=seed)
    return model, resolve_modules(model)


def subset_targets(family: Family, subset=SD1_SUBSET) -> list[Target]:
    return [t for t in targetable(family) if any(s in t.module for s in subset)]


def make_lora(
    family: Family, targets: list[Target], *, name: str, seed: int, rank: int = 4, alpha: float = 2.0
) -> ParsedLora:
    sd = kohya_lora(family, targets, rank=rank, alpha=alpha, seed=seed)
    return parse_state_dict(sd, family=family, name=name)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        x.dtype == b[k].dtype and torch.equal(x.view(torch.uint8), b[k].view(torch.uint8)) for k, x in a.items()
    )
