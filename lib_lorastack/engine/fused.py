"""The fused math: a parameter's new value from its pristine value and its contributions, rounded once.

new = round(W0 + Σ_additive s·ΔW  then, in stack order, W ← W + m·(W'(W) − W) for multiplicative adapters),
computed in fp32 (or ``compute_dtype``) on the weight's device. Additive low-rank contributions of one
parameter are one matrix product (ranks concatenated); parameters of equal shape and total rank are one
batched product. Both paths give the same bits (the batched product is per-matrix the same GEMM).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .device_cache import FactorCache
from .plan import Contribution


def canonical(contributions: Sequence[Contribution]) -> tuple[list[Contribution], list[Contribution]]:
    """Additive contributions in a fixed order (they commute; a fixed order keeps results bit-stable),
    multiplicative ones in stack order."""
    additive = sorted(
        (c for c in contributions if c.adapter.additive), key=lambda c: (str(c.lora.identity), str(c.target))
    )
    multiplicative = sorted((c for c in contributions if not c.adapter.additive), key=lambda c: c.order)
    return additive, multiplicative


@dataclass
class LowRank:
    up: torch.Tensor  # [out, R], strengths folded in
    down: torch.Tensor  # [R, fan_in]


def low_rank_sum(
    additive: Sequence[Contribution], cache: FactorCache, dtype: torch.dtype, device: torch.device
) -> tuple[LowRank | None, list[Contribution]]:
    """Concatenate the plain low-rank contributions; return the rest (dense or row-sliced) separately."""
    ups, downs, rest = [], [], []
    for c in additive:
        pair = cache.factors(c, dtype, device) if c.target.rows is None else None
        if pair is None:
            rest.append(c)
            continue
        ups.append(pair[0] * c.strength)
        downs.append(pair[1])
    if not ups:
        return None, rest
    return LowRank(torch.cat(ups, dim=1), torch.cat(downs, dim=0)), rest


def new_value(
    w0: torch.Tensor,
    contributions: Sequence[Contribution],
    cache: FactorCache,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The parameter's new value in the compute dtype (the write into the parameter rounds it, once) and the
    bias change (compute dtype) or None."""
    device = w0.device
    additive, multiplicative = canonical(contributions)
    lowrank, dense = low_rank_sum(additive, cache, compute_dtype, device)
    if lowrank is not None:
        # product first, then + W0: the same two steps as the batched path, so both give the same bits
        w = (lowrank.up @ lowrank.down).view(w0.shape)
        w.add_(w0)
    else:
        w = w0.to(compute_dtype, copy=True)
    bias: torch.Tensor | None = None
    for c in [*dense, *multiplicative]:
        view = w if c.target.rows is None else w[c.target.rows[0] : c.target.rows[1]]
        update = c.adapter.update(view, dtype=compute_dtype, device=device)
        view.add_(update.weight.reshape(view.shape), alpha=c.strength)
        if update.bias is not None:
            if bias is None:
                rows = w.shape[0]
                bias = torch.zeros(rows, dtype=compute_dtype, device=device)
            part = bias if c.target.rows is None else bias[c.target.rows[0] : c.target.rows[1]]
            part.add_(update.bias.reshape(part.shape), alpha=c.strength)
    return w, bias


def batched_low_rank(w0s: list[torch.Tensor], lowranks: list[LowRank]) -> torch.Tensor:
    """New values (compute dtype, [k, out, fan_in]) of same-shaped parameters whose changes are all low-rank
    with the same total rank: one batched product, then each W0 added in place."""
    values = torch.bmm(torch.stack([lr.up for lr in lowranks]), torch.stack([lr.down for lr in lowranks]))
    for value, w0 in zip(values, w0s):
        value.add_(w0.view(value.shape))
    return values
