"""Online patching: a touched layer computes its LoRAs in its own forward; weights are never written.

Each online layer gets one concatenated factor pair in the layer's dtype, whatever the number of LoRAs, and its
forward is replaced (not hooked): the base output, then the down product, then the up product added into the output
in place (on a GPU) — three kernel launches for a Linear or a Conv2d. The strengths are folded into the small up factor, so a
strength change rewrites only small factors (``OnlineLayer.rescale``). With a per-sample scale the rows of one batch
can carry different strengths (``OnlineLayer.sample_scale``). Dense and multiplicative contributions become one
precomputed ΔW. GroupNorm and LayerNorm add ``norm(x; Δw, Δb)`` (exact: a norm is linear in its affine
parameters). MultiheadAttention (it reads its weights directly) and Embedding are fused.

A layer whose weight is packed (GGUF, bitsandbytes 4-bit; ``packed.py``) goes online whatever the mode: its own
forward dequantises, the factors are kept in the dtype it dequantises into, shapes come from the logical shape, and
its bytes are never written or copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fused import WeightProgram, dense_delta
from .packed import factor_dtype, logical_shape, packed_kind
from .plan import ParamPlan

ONLINE_TYPES = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)


def can_go_online(module: torch.nn.Module, param: str) -> bool:
    # MultiheadAttention reads its out_proj weight directly and never calls out_proj's forward, so a forward there
    # would do nothing: that Linear (a NonDynamicallyQuantizableLinear) is always fused.
    if isinstance(module, torch.nn.modules.linear.NonDynamicallyQuantizableLinear):
        return False
    if isinstance(module, torch.nn.Conv2d) and module.groups != 1:
        return False
    return (isinstance(module, ONLINE_TYPES) or _linear_like(module) or _packed_linear(module)) and param == "weight"


def _linear_like(module: torch.nn.Module) -> bool:
    """A host's own Linear that is no ``nn.Linear`` (Forge's ``ForgeOperations.Linear``): recognised by what it
    holds, a 2-D floating weight matching its declared features; its forward (casts, dequantisation) stays its own."""
    weight = getattr(module, "weight", None)
    return (
        isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.is_floating_point()
        and not isinstance(module, torch.nn.Embedding)
        and tuple(weight.shape) == (getattr(module, "out_features", None), getattr(module, "in_features", None))
    )  # fmt: skip


def _packed_linear(module: torch.nn.Module) -> bool:
    """A host Linear whose weight is packed (Forge's GGUF Linear has no ``in_features``; bnb's data are [n, 1])."""
    weight = getattr(module, "weight", None)
    return packed_kind(weight) is not None and len(logical_shape(weight)) == 2 and not isinstance(module, torch.nn.Embedding)


class UpBank:
    """The up factors of several Linear layers of one output width, stored together ([ΣR, out]) so that folding
    new strengths into all of them is one launch. Each layer's ``up`` is a view of its rows."""

    def __init__(self, layers: list[OnlineLayer], dtype: torch.dtype) -> None:
        ups = [layer.program.up_t for layer in layers]  # type: ignore[union-attr]
        self.raw = torch.cat(ups, 0) if len(ups) > 1 else ups[0]  # [ΣR, out] fp32, file scales folded in
        self.scaled = torch.empty(self.raw.shape, dtype=dtype, device=self.raw.device)
        self.layers = layers
        start = 0
        for layer in layers:
            rank = sum(layer.ranks)
            layer.bank = self
            layer.up = self.scaled[start : start + rank].t()  # [out, R] view
            start += rank


class OnlineLayer:
    """What one module adds to its output, installed as the module's own ``forward``."""

    def __init__(self, module: torch.nn.Module, plan: ParamPlan) -> None:
        self.module = module
        self.plan = plan
        linear = isinstance(module, torch.nn.Linear) or _linear_like(module) or _packed_linear(module)
        self.kind = "linear" if linear else "conv" if isinstance(module, torch.nn.Conv2d) else "norm"
        self.program: WeightProgram | None = None  # the low-rank part's concatenated factors (shared with fused mode)
        self.low_rank: list[int] = []  # positions (canonical order) of the contributions in the factor pair
        self.ranks: list[int] = []
        self.down: torch.Tensor | None = None  # linear [R, in]; conv [R, in, kh, kw]; the layer's dtype
        self.up: torch.Tensor | None = None  # [out, R], strengths folded in, the layer's dtype
        self.bank: UpBank | None = None  # Linear layers on the GPU: where ``up`` lives
        self.up_raw: torch.Tensor | None = None  # layers outside a bank: ``up`` at strength 1, fp32
        self.dense_weight: torch.Tensor | None = None
        self.dense_bias: torch.Tensor | None = None
        self.sample_scale: torch.Tensor | None = None  # [samples, R]: per-sample strengths (then ``up`` is at 1)
        self.unit = False  # strengths are per sample: ``up`` holds the factors at strength 1
        weight = module.weight
        self.packed = packed_kind(weight)  # "gguf"/"nf4"/"fp4": the weight's bytes are the host's, never read here
        # the factors' dtype: the weight's, or the dtype a packed weight dequantises into
        self.dtype = factor_dtype(weight) if isinstance(weight, torch.Tensor) else torch.float32
        self._installed = False
        self._previous = None

    # ----------------------------------------------------------------- building
    def build(self, program: WeightProgram | None, compute_dtype: torch.dtype) -> None:
        weight: torch.Tensor = self.module.weight
        dtype = self.dtype
        additive, multiplicative = self.plan.canonical()
        if self.kind != "norm" and not multiplicative and program is not None and program.up_t is not None:
            self.program = program
            self.low_rank = list(program.low_rank)
            self.ranks = list(program.ranks)
            down = program.down_as(dtype)
            self.down = down.reshape(down.shape[0], *weight.shape[1:]) if self.kind == "conv" else down
            if self.kind == "conv" or not weight.is_cuda:
                # CPU Linear layers keep their own contiguous up: CPU half-precision GEMMs are several times slower
                # on a transposed view of a bank (the GPU's matrix units take either layout)
                self.up = torch.empty(program.up_t.shape[1], program.rank, dtype=dtype, device=weight.device)
                self.up_raw = program.up_t.t().contiguous()  # [out, R] fp32: rescaling reads it in order
            dense = [additive[i] for i in program.rest]
        else:
            dense = [*additive, *multiplicative]
        if dense:
            # a packed weight's additive changes do not depend on its values (the binder skips those that do): they
            # are computed on zeros of its logical shape, so its bytes are never read
            w0 = torch.zeros(logical_shape(weight), dtype=compute_dtype, device=weight.device) if self.packed else weight.detach()
            delta, bias = dense_delta(w0, dense, compute_dtype)
            self.dense_weight = delta.to(dtype)
            self.dense_bias = None if bias is None else bias.to(dtype)

    def scale_values(self) -> list[float]:
        if self.unit:
            return [1.0] * len(self.low_rank)
        strengths = self.plan.strengths
        return [strengths[i] for i in self.low_rank]

    # ----------------------------------------------------------------- installing
    def install(self) -> None:
        if not self._installed:
            self._previous = self.module.__dict__.get("forward")
            self.module.forward = self.forward  # type: ignore[method-assign]
            self._installed = True

    def remove(self) -> None:
        if self._installed:
            if self._previous is None:
                self.module.__dict__.pop("forward", None)
            else:
                self.module.forward = self._previous  # type: ignore[method-assign]
            self._installed = False

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base = self._previous if self._previous is not None else type(self.module).forward.__get__(self.module)
        out = base(x, *args, **kwargs)
        if self.kind == "linear":
            return self._linear(x, out)
        if self.kind == "conv":
            return self._conv(x, out)
        return self._norm(x, out)

    def _rows_scale(self, n: int) -> torch.Tensor | None:
        scale = self.sample_scale
        if scale is None:
            return None
        samples = scale.shape[0]
        if n == samples:
            return scale
        if n % samples:
            raise RuntimeError(f"online LoRA: a batch of {n} rows does not fit {samples} per-sample scales")
        return scale.repeat(n // samples, 1)

    def _linear(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.down is not None:
            down, up = _like(self.down, x), _like(self.up, x)
            h = F.linear(x, down)
            rows = self._rows_scale(h.shape[0]) if h.dim() > 1 else None
            if rows is not None:
                h = h * _like(rows.view(rows.shape[0], *([1] * (h.dim() - 2)), rows.shape[1]), h)
            if out.is_cuda and out.is_contiguous() and out.dtype == h.dtype:
                out.view(-1, out.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), up.t())  # added in place: one launch
            else:
                out = out + F.linear(h, up)
        if self.dense_weight is not None:
            out = out + F.linear(x, _like(self.dense_weight, x), _like(self.dense_bias, x))
        elif self.dense_bias is not None:
            out = out + _like(self.dense_bias, x)
        return out

    def _conv(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        m = self.module
        if self.down is not None:
            down, up = _like(self.down, x), _like(self.up, x)
            h = F.conv2d(x, down, None, m.stride, m.padding, m.dilation)
            rows = self._rows_scale(h.shape[0])
            if rows is not None:
                h = h * _like(rows.view(*rows.shape, 1, 1), h)
            n, c = out.shape[0], out.shape[1]
            if out.is_cuda and out.is_contiguous() and h.is_contiguous() and out.dtype == h.dtype:
                out.view(n, c, -1).baddbmm_(up.expand(n, -1, -1), h.view(n, h.shape[1], -1))
            else:
                out = out + F.conv2d(h, up.reshape(c, -1, 1, 1))
        if self.dense_weight is not None:
            out = out + F.conv2d(x, _like(self.dense_weight, x), _like(self.dense_bias, x), m.stride, m.padding, m.dilation, m.groups)
        elif self.dense_bias is not None:
            out = out + _like(self.dense_bias, x).reshape(1, -1, 1, 1)
        return out

    def _norm(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        m = self.module
        dw = _like(self.dense_weight, x) if self.dense_weight is not None else torch.zeros(m.weight.shape, dtype=x.dtype, device=x.device)
        db = _like(self.dense_bias, x)
        if isinstance(m, torch.nn.GroupNorm):
            return out + F.group_norm(x, m.num_groups, dw, db, m.eps)
        return out + F.layer_norm(x, m.normalized_shape, dw, db, m.eps)


def _like(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """``t`` in the input's dtype and on its device. A host that streams or offloads layers (Forge's GPU-weights
    budget, async offload) computes a layer on another device than the one its factors were built on: the factors
    follow the input each call, as the host moves the layer's own weight."""
    if t is None or (t.dtype == x.dtype and t.device == x.device):
        return t
    return t.to(device=x.device, dtype=x.dtype, non_blocking=True)


def make_banks(layers: list[OnlineLayer]) -> None:
    """Give newly built Linear layers their up factors in banks, one per device, dtype and output width."""
    groups: dict[tuple, list[OnlineLayer]] = {}
    for layer in layers:
        weight = layer.module.weight
        if layer.kind == "linear" and layer.program is not None and weight.is_cuda:
            groups.setdefault((weight.device, layer.dtype, layer.program.out_features), []).append(layer)
    for (_, dtype, _), group in groups.items():
        UpBank(group, dtype)


def rescale(layers: list[OnlineLayer], compute_dtype: torch.dtype) -> None:
    """Fold the current strengths into the up factors of ``layers`` (and of every layer sharing a bank with one):
    one launch per bank, one per layer outside a bank, one transfer of all the scale values."""
    banks, alone = rescale_groups(layers)
    order = [lay for bank in banks for lay in bank.layers] + alone
    if not order:
        return
    values: list[float] = []
    repeats: list[int] = []
    for layer in order:
        values += layer.scale_values()
        repeats += layer.ranks
    host = torch.repeat_interleave(torch.tensor(values, dtype=compute_dtype), torch.tensor(repeats, dtype=torch.long))
    write_scales(banks, alone, host)


def rescale_groups(layers: list[OnlineLayer]) -> tuple[list[UpBank], list[OnlineLayer]]:
    """The banks ``layers`` live in and the layers outside a bank: ``rescale``'s order of the scale values (each
    bank's layers, then the others)."""
    banks: dict[int, UpBank] = {}
    alone: list[OnlineLayer] = []  # conv layers, and Linear layers off the GPU
    for layer in layers:
        if layer.bank is not None:
            banks[id(layer.bank)] = layer.bank
        elif layer.up is not None:
            alone.append(layer)
    return list(banks.values()), alone


def write_scales(banks: list[UpBank], alone: list[OnlineLayer], host: torch.Tensor) -> None:
    """Fold per-rank scale values (``rescale_groups`` order, on the host) into the up factors."""
    order = [lay for bank in banks for lay in bank.layers] + alone
    if not order:
        return
    device = order[0].up.device  # type: ignore[union-attr]
    scale = host.to(device, non_blocking=True) if device.type != "cpu" else host
    start = 0
    for bank in banks:
        rows = bank.raw.shape[0]
        torch.mul(bank.raw, scale[start : start + rows].view(-1, 1), out=bank.scaled)
        start += rows
    for layer in alone:
        rank = sum(layer.ranks)
        torch.mul(layer.up_raw, scale[start : start + rank].view(1, -1), out=layer.up)
        start += rank
