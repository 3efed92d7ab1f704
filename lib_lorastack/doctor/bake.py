"""Stack → one LoRA, exactly (ranks concatenated) or compressed (summed change, truncated SVD).

Exact: per target, ``up = [s_1·U_1 | s_2·U_2 | …]`` and ``down = [D_1; D_2; …]`` with every strength, block
weight and the files' own ``alpha/rank`` folded into ``up``, and ``alpha`` = the new rank so the scale is 1: the
product is exactly ``Σ s_i·ΔW_i``. Only plain low-rank adapters can be written this way; any other target (LoHa,
LoKr, full, Tucker LoCon, DoRA/OFT/… at the base weights) goes through the compressed path and is reported.
Compressed: ``ΣΔW`` per target, best rank-k approximation; the energy kept and the error per block are reported.
Norm changes (``w_norm``/``b_norm``) are summed exactly.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..formats.targets import Family, Target
from ..formats.writers import kohya_key
from .basefile import BaseCheckpoint, CheckpointError
from .changes import Part, TargetChange, collect_changes
from .lowrank import Truncation, truncate_dense, truncate_factors
from .output import check_output, lora_metadata, write_lora
from .progress import ProgressFn, no_progress
from .stack import StackItem

METHODS = ("exact", "svd")
FALLBACK_RANK = 32  # rank of the compressed path when none is given and the stack has no plain LoRA
_BIAS_KEYS = ("bias", "diff_b", "b_norm")


@dataclass
class BakedModule:
    target: Target
    block: str
    method: str  # "concat", "svd" or "norm"
    rank: int
    total: float  # ‖ΣΔW‖²
    kept: float  # energy of what was written (= total when exact)
    labels: tuple[str, ...] = ()  # adapter kinds that made this target go through the compressed path


@dataclass
class LoraBake:
    """A baked or merged LoRA, ready to save: kohya keys, and what was kept where."""

    family: Family
    method: str
    tensors: dict[str, torch.Tensor]
    modules: list[BakedModule]
    recipe: dict
    notes: list[str] = field(default_factory=list)

    @property
    def ranks(self) -> set[int]:
        return {m.rank for m in self.modules if m.method != "norm"}

    def blocks(self) -> dict[str, dict[str, float]]:
        """Per block: the share of the energy kept and the relative error ‖ΣΔW − written‖ / ‖ΣΔW‖."""
        acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for m in self.modules:
            acc[m.block][0] += m.total
            acc[m.block][1] += m.kept
        return {
            b: {"kept": kept / total if total else 1.0, "error": math.sqrt(max(total - kept, 0) / total) if total else 0.0}
            for b, (total, kept) in acc.items()
        }

    def save(self, path: str | Path, items: Sequence[StackItem], *, force: bool = False, extra_inputs=()) -> Path:
        """Write the LoRA (atomically; never over an input or an existing file unless ``force``)."""
        out = check_output(path, [*(it.path for it in items if it.path), *extra_inputs], force=force)
        recipe = {**self.recipe, "energy_kept": {b: round(v["kept"], 6) for b, v in self.blocks().items()}}
        write_lora(out, self.tensors, lora_metadata(list(items), self.family, out, self.ranks, recipe))
        return out


def _bias(part: Part, shape, dtype) -> torch.Tensor | None:
    if not any(k in part.adapter.tensors for k in _BIAS_KEYS) or not part.additive:
        return None
    update = part.adapter.update(torch.zeros(shape, dtype=dtype), dtype=dtype, device="cpu")
    return None if update.bias is None else update.bias * part.strength


def _write_factors(out: dict, key: str, shape: tuple[int, ...], up: torch.Tensor, down: torch.Tensor, dtype) -> None:
    k = up.shape[1]
    if len(shape) == 4:
        up = up.reshape(shape[0], k, 1, 1)
        down = down.reshape(k, shape[1], *shape[2:])
    out[f"{key}.lora_up.weight"] = up.to(dtype).contiguous()
    out[f"{key}.lora_down.weight"] = down.to(dtype).contiguous()
    out[f"{key}.alpha"] = torch.tensor(float(k))


def default_rank(items: Sequence[StackItem]) -> int:
    """The largest rank of the stack's plain LoRA modules (PEFT's default for its SVD merge), else ``FALLBACK_RANK``."""
    ranks = [a.rank for it in items for a in it.lora.modules.values() if a.algo == "lora" and a.rank]
    return max(ranks or [FALLBACK_RANK])


ChangeFn = Callable[[TargetChange, "torch.Tensor | None"], torch.Tensor]


def build_lora(
    items: Sequence[StackItem],
    family: Family,
    *,
    method: str,
    rank: int,
    dense_change: ChangeFn | None = None,
    base: BaseCheckpoint | None = None,
    dtype: torch.dtype = torch.float32,
    save_dtype: torch.dtype = torch.float32,
    progress: ProgressFn = no_progress,
    what: str = "bake",
) -> tuple[dict[str, torch.Tensor], list[BakedModule], list[str]]:
    """The shared writer of bake and merge: per target, exact concat (``method == "exact"`` and all parts plain
    LoRA), else the best rank-``rank`` approximation of ``dense_change(change, w0)`` (default: Σ s·ΔW)."""
    changes = collect_changes(items, family)
    if base is not None:
        faults = [f for f in (base.fault(c.target, c.shape) for c in changes if c.needs_base) if f]
        if faults:
            raise CheckpointError(base.path, faults[0])
    tensors: dict[str, torch.Tensor] = {}
    modules: list[BakedModule] = []
    notes: list[str] = []
    compressed: dict[tuple[str, str], int] = defaultdict(int)
    skipped: dict[tuple[str, str], int] = defaultdict(int)
    unnamed: list[str] = []
    for done, change in enumerate(changes, 1):
        progress(done, len(changes), what)
        parts = change.parts
        w0 = None
        if change.needs_base:
            if base is None:
                for p in parts:
                    if not p.additive:
                        skipped[(items[p.index].name, p.adapter.label)] += 1
                parts = [p for p in parts if p.additive]
                if not parts:
                    continue
                change = TargetChange(change.target, change.block, change.shape, parts)
            else:
                w0 = base.weight(change.target, dtype=dtype)
        try:
            key = kohya_key(change.target, family)
        except ValueError:
            unnamed.append(str(change.target))
            continue
        biases = [b for b in (_bias(p, change.shape, dtype) for p in parts) if b is not None]
        if len(change.shape) == 1:  # norm weights: summed exactly
            value = change.dense(dtype=dtype).reshape(change.shape)
            tensors[f"{key}.w_norm"] = value.to(save_dtype)
            if biases:
                tensors[f"{key}.b_norm"] = sum(biases).to(save_dtype)
            energy = float(value.double().pow(2).sum())
            modules.append(BakedModule(change.target, change.block, "norm", 0, energy, energy))
            continue
        pairs = [p.factors(dtype, "cpu") for p in parts]
        low_rank = all(pair is not None for pair in pairs)
        if method == "exact" and low_rank and dense_change is None:
            up = torch.cat([pair[0] * p.strength for p, pair in zip(parts, pairs)], 1)
            down = torch.cat([pair[1] for pair in pairs], 0)
            _write_factors(tensors, key, change.shape, up, down, save_dtype)
            energy = float((up @ down).double().pow(2).sum())
            modules.append(BakedModule(change.target, change.block, "concat", up.shape[1], energy, energy))
        else:
            if dense_change is None and low_rank:
                up = torch.cat([pair[0] * p.strength for p, pair in zip(parts, pairs)], 1)
                cut: Truncation = truncate_factors(up, torch.cat([pair[1] for pair in pairs], 0), rank)
            else:
                x = dense_change(change, w0) if dense_change is not None else change.dense(w0=w0, dtype=dtype)
                cut = truncate_dense(x, rank)
            labels = tuple(sorted({p.adapter.label for p, pair in zip(parts, pairs) if pair is None}))
            if method == "exact":
                for p, pair in zip(parts, pairs):
                    if pair is None:
                        compressed[(items[p.index].name, p.adapter.label)] += 1
            if cut.rank == 0:
                continue
            _write_factors(tensors, key, change.shape, cut.up, cut.down, save_dtype)
            modules.append(BakedModule(change.target, change.block, "svd", cut.rank, cut.total, cut.kept, labels))
        if biases:
            tensors[f"{key}.bias"] = sum(biases).to(save_dtype)
    if not changes:
        progress(0, 0, what)
    for (name, label), count in compressed.items():
        notes.append(
            f"{name}: {count} {label} layer(s) are not a plain low-rank product and cannot be baked exactly; "
            f"compressed to rank {rank} (see the energy kept per block)"
        )
    for (name, label), count in skipped.items():
        notes.append(
            f"{name}: {count} {label} layer(s) depend on the base weights and were left out; give --base to include them"
        )
    if unnamed:
        notes.append(f"{len(unnamed)} layer(s) have no kohya name and were left out, e.g. {unnamed[0]}")
    for it in items:
        if it.entry.start is not None or it.entry.stop is not None:
            notes.append(f"{it.name}: start/stop cannot be baked; the baked LoRA is active at every step")
    return tensors, modules, notes


def bake_lora(
    items: Sequence[StackItem],
    family: Family | str | None = None,
    *,
    method: str = "exact",
    rank: int | None = None,
    base: BaseCheckpoint | None = None,
    dtype: torch.dtype = torch.float32,
    save_dtype: torch.dtype = torch.float32,
    progress: ProgressFn = no_progress,
) -> LoraBake:
    """Bake a stack (strengths, block weights) into one LoRA. ``method``: "exact" (concat) or "svd" (rank ``rank``,
    default: the stack's largest LoRA rank). ``base`` lets DoRA/OFT/IA3/GLoRA be included at the base weights."""
    if method not in METHODS:
        raise ValueError(f"bake method must be one of {METHODS}, not {method!r}")
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be at least 1, not {rank}")
    family = Family(family or items[0].lora.family)
    k = rank or default_rank(items)
    tensors, modules, notes = build_lora(
        items, family, method=method, rank=k, base=base, dtype=dtype, save_dtype=save_dtype, progress=progress
    )
    recipe = {"tool": "lib_lorastack bake", "method": "concat" if method == "exact" else "svd", "rank": None if method == "exact" else k}
    return LoraBake(family, method, tensors, modules, recipe, notes)
