"""Merges of the diffusers/PEFT model-merging guide, applied to the full changes, then compressed to a LoRA.

Per target, the task tensors are the LoRAs' changes at strength 1, ``τ_i = ΔW_i`` (the file's own scale in), and
the weights are their strengths there (TE or UNet strength × block weight), ``w_i``:

* ``linear`` (task arithmetic): ``Σ w_i·τ_i``.
* ``magnitude_prune``: keep the ``density`` share of each τ_i's entries with the largest magnitude, then linear.
* ``ties``: magnitude-prune each τ_i, elect the sign of every entry (``total``: the sign of Σ τ_i; ``frequency``:
  the more frequent sign), then the mean of the weighted entries that agree with it (disjoint merge).
* ``dare_linear`` / ``dare_ties``: drop each entry at random with probability ``1 − density`` and rescale the rest
  by ``1/density``, then linear / the TIES sign election and disjoint merge.

Same definitions as ``peft.utils.merge_utils`` (the tests compare with it). DARE's random mask is drawn on the CPU
from a generator seeded with ``module_seed(seed, target)``, one mask per LoRA in stack order: reproducible, and
independent of the device and of the order targets are processed in.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch

from ..formats.targets import Family, Target
from .bake import LoraBake, build_lora, default_rank
from .basefile import BaseCheckpoint
from .changes import TargetChange
from .progress import ProgressFn, no_progress
from .stack import StackItem

MERGE_METHODS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
SIGN_METHODS = ("total", "frequency")


def module_seed(seed: int, target: Target | str) -> int:
    """The seed of a target's DARE masks."""
    return (int(seed) * 1_000_003 + zlib.crc32(str(target).encode())) % (2**63)


def prune_magnitude(t: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density·numel)`` entries of largest magnitude."""
    if density >= 1:
        return t
    k = int(density * t.numel())
    mask = torch.zeros(t.numel(), dtype=t.dtype, device=t.device)
    mask[torch.topk(t.abs().reshape(-1), k=k, largest=True).indices] = 1
    return t * mask.reshape(t.shape)


def prune_random(t: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Keep each entry with probability ``density`` and rescale by ``1/density`` (DARE). The mask is drawn on the
    CPU with ``generator``."""
    if density >= 1:
        return t
    keep = torch.bernoulli(torch.full(t.shape, density, dtype=t.dtype), generator=generator).to(t.device)
    return t * keep / density


def elect_sign(stacked: torch.Tensor, method: str = "total") -> torch.Tensor:
    """Which entries of each task tensor (stacked on dim 0) agree with the elected sign (ties go to +)."""
    signs = stacked.sign()
    if method == "total":
        votes = stacked.sum(0)
    elif method == "frequency":
        votes = signs.sum(0)
    else:
        raise ValueError(f"majority sign method must be one of {SIGN_METHODS}, not {method!r}")
    return signs == torch.where(votes >= 0, 1, -1)


def merge_tensors(
    method: str,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    density: float = 1.0,
    majority_sign: str = "total",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Merge task tensors of one parameter (see the module docstring)."""
    if method not in MERGE_METHODS:
        raise ValueError(f"merge method must be one of {MERGE_METHODS}, not {method!r}")
    if method in ("ties", "magnitude_prune"):
        tensors = [prune_magnitude(t, density) for t in tensors]
    elif method.startswith("dare"):
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        tensors = [prune_random(t, density, g) for t in tensors]
    stacked = torch.stack(list(tensors))
    w = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device).view(-1, *([1] * (stacked.dim() - 1)))
    weighted = stacked * w
    if method in ("ties", "dare_ties"):
        agree = elect_sign(stacked, majority_sign)
        return (weighted * agree).sum(0) / agree.sum(0).clamp(min=1)
    return weighted.sum(0)


def merge_stack(
    items: Sequence[StackItem],
    family: Family | str | None = None,
    *,
    method: str = "ties",
    density: float = 0.5,
    seed: int = 0,
    rank: int | None = None,
    majority_sign: str = "total",
    base: BaseCheckpoint | None = None,
    dtype: torch.dtype = torch.float32,
    save_dtype: torch.dtype = torch.float32,
    progress: ProgressFn = no_progress,
) -> LoraBake:
    """Merge the stack's LoRAs with ``method`` on their full changes and compress each target's result to rank
    ``rank`` (default: the stack's largest LoRA rank)."""
    if method not in MERGE_METHODS:
        raise ValueError(f"merge method must be one of {MERGE_METHODS}, not {method!r}")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], not {density}")
    if majority_sign not in SIGN_METHODS:
        raise ValueError(f"majority sign method must be one of {SIGN_METHODS}, not {majority_sign!r}")
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be at least 1, not {rank}")
    family = Family(family or items[0].lora.family)
    k = rank or default_rank(items)

    def merged(change: TargetChange, w0: torch.Tensor | None) -> torch.Tensor:
        taus = [p.unit_change(change.shape, w0=w0, dtype=dtype) for p in change.parts]
        g = torch.Generator().manual_seed(module_seed(seed, change.target))
        return merge_tensors(
            method, taus, [p.strength for p in change.parts], density=density, majority_sign=majority_sign, generator=g
        )

    tensors, modules, notes = build_lora(
        items, family, method="svd", rank=k, dense_change=merged, base=base, dtype=dtype, save_dtype=save_dtype,
        progress=progress, what="merge",
    )
    recipe = {
        "tool": "lib_lorastack merge",
        "method": method,
        "density": density,
        "seed": seed,
        "majority_sign": majority_sign,
        "rank": k,
    }
    return LoraBake(family, method, tensors, modules, recipe, notes)
