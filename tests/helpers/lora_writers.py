"""Fixture writers: the library's own kohya writer plus a diffusers/PEFT one."""

from __future__ import annotations

import torch

from lib_lorastack.targets import Family, Target
from lib_lorastack.writers import kohya_key, kohya_lora, peft_key, random_lora_factors, target_shape, targetable

__all__ = ["kohya_key", "kohya_lora", "peft_lora", "targetable"]


def peft_lora(family: Family, targets: list[Target], *, rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for t in targets:
        up, down = random_lora_factors(target_shape(t, family), rank, g)
        key = peft_key(t, family)
        sd[f"{key}.lora_A.weight"] = down
        sd[f"{key}.lora_B.weight"] = up
    return sd
