"""Weights the host stores packed (GGUF blocks, bitsandbytes 4-bit), recognised by what the tensor holds.

A packed weight's bytes are the host's: the engine never writes them and never copies them. Its layer goes online
(``online.py``): the layer's own forward still dequantises (the host's code), the LoRA factors live beside it in the
layer's compute dtype. Planning reads the logical shape, never the packed one.

* GGUF (Forge/Neo ``ParameterGGUF``): ``gguf_cls`` names the block format (None for F16/F32 tensors, which are
  plain data), ``.shape`` already returns the logical shape, the data are uint8/int8 blocks, ``computation_dtype``
  is what the forward dequantises into.
* bitsandbytes 4-bit (``Params4bit``): ``bnb_quantized``; once quantised, ``quant_state`` carries the logical
  ``shape``, the ``dtype`` it dequantises into and the ``quant_type`` (nf4/fp4); the data are uint8 [n, 1].

A contribution whose change depends on W itself (DoRA, OFT, BOFT, IA3, GLoRA: the multiplicative adapters) would
need the dequantised weight: it is skipped on a packed layer with a message naming the LoRA, the layer and why
(the rest of the stack applies). Additive changes (LoRA/LoCon, LoHa, LoKr, full) do not depend on W.
"""

from __future__ import annotations

import torch


def packed_kind(weight: object) -> str | None:
    """"gguf", "nf4", "fp4" (or "4-bit") for a packed weight, else None."""
    if not isinstance(weight, torch.Tensor):
        return None
    if getattr(weight, "gguf_cls", None) is not None:
        return "gguf"
    if hasattr(weight, "bnb_quantized") or getattr(weight, "quant_state", None) is not None:
        state = getattr(weight, "quant_state", None)
        return str(getattr(state, "quant_type", None) or "4-bit")
    return None


def logical_shape(weight: torch.Tensor) -> torch.Size:
    """The shape the layer computes with (a packed tensor's own ``shape`` may be that of its bytes)."""
    state = getattr(weight, "quant_state", None)
    shape = getattr(state, "shape", None)
    return torch.Size(shape) if shape is not None else weight.shape


def factor_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype a layer's LoRA factors are kept in: the dtype its forward dequantises into for a packed weight."""
    gguf_dtype = getattr(weight, "computation_dtype", None)
    if getattr(weight, "gguf_cls", None) is not None and isinstance(gguf_dtype, torch.dtype):
        return gguf_dtype
    state_dtype = getattr(getattr(weight, "quant_state", None), "dtype", None)
    if isinstance(state_dtype, torch.dtype):
        return state_dtype
    return weight.dtype if weight.is_floating_point() else torch.float16


def packed_fault(module: torch.nn.Module, param: str, adapter) -> str | None:
    """Why ``adapter`` cannot apply to ``module.param`` when that weight is packed (None: it can, online)."""
    weight = getattr(module, param, None)
    kind = packed_kind(weight)
    if kind is None:
        return None
    if param != "weight" or len(logical_shape(weight)) != 2 or isinstance(module, torch.nn.Embedding):
        return f"the weight is stored as {kind} on a layer that cannot compute its LoRA online (packed weights are never written)"
    if not adapter.additive:
        return (
            f"{type(adapter).__name__} changes W itself, and W is stored as {kind} (packed weights are never "
            "dequantised or written by LoRA Stack)"
        )
    return None
