"""Online patching: touched layers add their LoRAs' output in the forward; weights are never written.

Low-rank additive contributions run as ``up(down(x))`` (a k×k conv then a 1×1 conv for convs); every other
contribution of a layer (dense, multiplicative) is folded into one precomputed ΔW. Linear, Conv2d, GroupNorm
and LayerNorm layers can go online; others (MultiheadAttention reads its weights directly, Embedding) are fused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .device_cache import FactorCache
from .fused import canonical, new_value
from .plan import Contribution

ONLINE_TYPES = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)


def can_go_online(module: torch.nn.Module, param: str) -> bool:
    # MultiheadAttention reads its out_proj weight directly and never calls out_proj's forward, so a hook there
    # would do nothing: that Linear (a NonDynamicallyQuantizableLinear) is always fused.
    if isinstance(module, torch.nn.modules.linear.NonDynamicallyQuantizableLinear):
        return False
    return isinstance(module, ONLINE_TYPES) and param == "weight"


@dataclass
class OnlineState:
    """What one module adds to its output."""

    low_rank: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (up·s [out,R], down [R,…])
    dense_weight: torch.Tensor | None = None  # ΔW of everything else
    dense_bias: torch.Tensor | None = None
    handle: torch.utils.hooks.RemovableHandle | None = None


def build_state(
    module: torch.nn.Module, contributions: Sequence[Contribution], cache: FactorCache, compute_dtype: torch.dtype
) -> OnlineState:
    weight: torch.Tensor = module.weight
    state = OnlineState()
    additive, multiplicative = canonical(contributions)
    rest: list[Contribution] = []
    # Multiplicative adapters act on the summed additive change, so then everything is folded into one ΔW.
    if isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and not multiplicative:
        for c in additive:
            pair = None
            if c.target.rows is None and "bias" not in c.adapter.tensors:
                pair = cache.factors(c, compute_dtype, weight.device)
            if pair is None:
                rest.append(c)
            else:
                state.low_rank.append((pair[0] * c.strength, pair[1]))
    else:
        rest = list(additive)
    rest += multiplicative
    if rest:
        w0 = weight.detach()
        new, bias = new_value(w0, rest, cache, compute_dtype)
        state.dense_weight = new - w0.to(compute_dtype)
        state.dense_bias = bias
    return state


def forward_extra(module: torch.nn.Module, x: torch.Tensor, state: OnlineState) -> torch.Tensor | None:
    extra: torch.Tensor | None = None

    def add(t: torch.Tensor) -> None:
        nonlocal extra
        extra = t if extra is None else extra + t

    if isinstance(module, torch.nn.Linear):
        for up, down in state.low_rank:
            add(F.linear(F.linear(x, down.to(x.dtype)), up.to(x.dtype)))
        if state.dense_weight is not None:
            add(F.linear(x, state.dense_weight.to(x.dtype)))
        if state.dense_bias is not None:
            add(state.dense_bias.to(x.dtype))
    elif isinstance(module, torch.nn.Conv2d):
        out_ch, in_ch, kh, kw = module.weight.shape
        for up, down in state.low_rank:
            h = F.conv2d(
                x, down.to(x.dtype).reshape(-1, in_ch, kh, kw), None, module.stride, module.padding, module.dilation
            )
            add(F.conv2d(h, up.to(x.dtype).reshape(out_ch, -1, 1, 1)))
        if state.dense_weight is not None:
            add(F.conv2d(x, state.dense_weight.to(x.dtype), None, module.stride, module.padding, module.dilation, module.groups))
        if state.dense_bias is not None:
            add(state.dense_bias.to(x.dtype).reshape(1, -1, 1, 1))
    elif isinstance(module, torch.nn.GroupNorm):
        dw = state.dense_weight.to(x.dtype) if state.dense_weight is not None else torch.zeros_like(module.weight, dtype=x.dtype)
        db = state.dense_bias.to(x.dtype) if state.dense_bias is not None else None
        add(F.group_norm(x, module.num_groups, dw, db, module.eps))
    elif isinstance(module, torch.nn.LayerNorm):
        dw = state.dense_weight.to(x.dtype) if state.dense_weight is not None else torch.zeros_like(module.weight, dtype=x.dtype)
        db = state.dense_bias.to(x.dtype) if state.dense_bias is not None else None
        add(F.layer_norm(x, module.normalized_shape, dw, db, module.eps))
    return extra
