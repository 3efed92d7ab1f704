"""Which algorithm owns a module's keys, and building its adapter."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .base import Adapter
from .boft import BOFT
from .dora import MAGNITUDE_KEYS, DoRA
from .full import Full
from .glora import GLoRA
from .ia3 import IA3
from .loha import LoHa
from .lokr import LoKr
from .lora import LoRA
from .norm import Norm
from .oft import OFT

# OFT and BOFT share their keys; build_adapter tells them apart by the rank of oft_blocks.
ADAPTER_CLASSES: tuple[type[Adapter], ...] = (LoRA, LoHa, LoKr, Full, Norm, IA3, GLoRA, BOFT, OFT)

KNOWN_SUFFIXES: frozenset[str] = frozenset(
    {
        "lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha", "scale", "bias",
        "dora_scale", "lora_magnitude_vector",
        "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
        "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
        "diff", "diff_b", "w_norm", "b_norm", "weight", "on_input",
        "a1.weight", "a2.weight", "b1.weight", "b2.weight", "bm.weight",
        "oft_blocks", "oft_diag", "rescale",
    }
)  # fmt: skip


def find_adapter_class(suffixes: frozenset[str]) -> type[Adapter] | None:
    """The class that owns a module with these key suffixes (DoRA's magnitude key aside)."""
    plain = suffixes - set(MAGNITUDE_KEYS)
    for cls in ADAPTER_CLASSES:
        if cls is BOFT or cls is OFT:
            continue
        if cls.accepts(plain):
            return DoRA if plain != suffixes else cls
    if OFT.accepts(plain) or BOFT.accepts(plain):
        return None if plain != suffixes else OFT  # resolved by tensor rank in build_adapter
    return None


def build_adapter(tensors: Mapping[str, torch.Tensor], *, dyn: int | None = None) -> Adapter:
    """The adapter for one module's tensors (keyed by suffix). ValueError names the suffixes no class accepts."""
    suffixes = frozenset(tensors)
    plain = {k: v for k, v in tensors.items() if k not in MAGNITUDE_KEYS}
    cls = find_adapter_class(suffixes)
    if cls is None:
        raise ValueError(f"no adapter type accepts the keys {sorted(suffixes)}")
    if cls is OFT and tensors["oft_blocks" if "oft_blocks" in tensors else "oft_diag"].dim() == 4:
        cls = BOFT
    if cls is DoRA:
        inner_cls = find_adapter_class(frozenset(plain))
        assert inner_cls is not None
        inner = inner_cls(plain, dyn=dyn) if inner_cls is LoRA else inner_cls(plain)
        return DoRA(tensors, inner)
    return cls(tensors, dyn=dyn) if cls is LoRA else cls(tensors)
