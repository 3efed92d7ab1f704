"""Fixture writers: kohya, diffusers/PEFT and LyCORIS-named state dicts for given targets.

``targets`` may be ``Target``s or module names (a name of an OpenCLIP attention stands for its q, k and v rows).
"""

from __future__ import annotations

import torch

from lib_lorastack.formats.targets import Family, Target
from lib_lorastack.formats.writers import kohya_key, kohya_lora, peft_key, random_lora_factors, target_shape, targetable

__all__ = [
    "kohya_key",
    "kohya_lora",
    "kohya_lora_for_targets",
    "lycoris_loha_for_targets",
    "peft_lora",
    "peft_lora_for_targets",
    "resolve_targets",
    "targetable",
]


def resolve_targets(family: Family, targets: list[Target | str]) -> list[Target]:
    """Module names → their targets (all q/k/v rows of a fused attention); Targets pass through."""
    by_module: dict[str, list[Target]] = {}
    for t in targetable(family, norms=True):
        by_module.setdefault(t.module, []).append(t)
    out: list[Target] = []
    for t in targets:
        if isinstance(t, Target):
            out.append(t)
        elif t in by_module:
            out += by_module[t]
        else:
            raise ValueError(f"{t!r} is not a targetable module of {Family(family).value}")
    return out


def peft_lora(family: Family, targets: list[Target], *, rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for t in targets:
        up, down = random_lora_factors(target_shape(t, family), rank, g)
        key = peft_key(t, family)
        sd[f"{key}.lora_A.weight"] = down
        sd[f"{key}.lora_B.weight"] = up
    return sd


def kohya_lora_for_targets(
    family: Family, targets: list[Target | str], rank: int = 4, alpha: float | None = 2.0, seed: int = 0
) -> dict[str, torch.Tensor]:
    """kohya keys (SDXL UNet with LDM names, as kohya writes them)."""
    return kohya_lora(family, resolve_targets(family, targets), rank=rank, alpha=alpha, seed=seed)


def peft_lora_for_targets(
    family: Family, targets: list[Target | str], rank: int = 4, seed: int = 0
) -> dict[str, torch.Tensor]:
    """diffusers/PEFT keys: ``unet.…`` / ``text_encoder(_2).…`` with ``lora_A``/``lora_B`` (no alpha: scale 1)."""
    return peft_lora(family, resolve_targets(family, targets), rank=rank, seed=seed)


def lycoris_loha_for_targets(
    family: Family, targets: list[Target | str], rank: int = 4, alpha: float = 2.0, seed: int = 0
) -> dict[str, torch.Tensor]:
    """LoHa keys (``hada_w1_a`` …) on kohya prefixes, as LyCORIS writes them (convs as flat 2-D factors)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for t in resolve_targets(family, targets):
        shape = target_shape(t, family)
        out, fan_in = shape[0], 1
        for s in shape[1:]:
            fan_in *= s
        key = kohya_key(t, family)
        for i in (1, 2):
            sd[f"{key}.hada_w{i}_a"] = torch.randn(out, rank, generator=g) * 0.1
            sd[f"{key}.hada_w{i}_b"] = torch.randn(rank, fan_in, generator=g) * 0.1
        sd[f"{key}.alpha"] = torch.tensor(float(alpha))
    return sd
