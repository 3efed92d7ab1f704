"""Flux LoRA state dicts in each trainer's spelling (seeded noise factors; shapes from a shape function)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def factors(out_f: int, in_f: int, rank: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(down [rank, in], up [out, rank]) of noise scaled so that up @ down is O(0.1)."""
    down = torch.randn(rank, in_f, generator=gen) / in_f**0.5
    up = torch.randn(out_f, rank, generator=gen) * 0.3
    return down, up


def lora_dict(
    modules: Iterable[tuple[str, tuple[int, int]]],
    *,
    down_key: str = "lora_down.weight",
    up_key: str = "lora_up.weight",
    alpha: Callable[[int], float] | None = None,
    rank: int = 4,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """``prefix.down_key`` / ``prefix.up_key`` (and ``prefix.alpha`` when ``alpha(i)`` gives one) per module."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for i, (prefix, (out_f, in_f)) in enumerate(modules):
        down, up = factors(out_f, in_f, rank, gen)
        sd[f"{prefix}.{down_key}"], sd[f"{prefix}.{up_key}"] = down, up
        if alpha is not None:
            sd[f"{prefix}.alpha"] = torch.tensor(float(alpha(i)))
    return sd
