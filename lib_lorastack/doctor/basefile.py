"""The base checkpoint (a WebUI ``.safetensors`` model): its family and the weights a stack changes.

Keys are the WebUI's checkpoint names: module name + ``.`` + parameter (``model.diffusion_model.….weight``,
``cond_stage_model.transformer.….weight``, ``conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from ..errors import LoraFileError, LoraStackError
from ..formats.files import LoraFile
from ..formats.targets import Family, Target

_FAMILY_MARKERS = (
    ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", Family.SDXL),
    ("model.diffusion_model.label_emb.0.0.weight", Family.SDXL),
    ("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", Family.SD2),
    ("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight", Family.SD1),
)
_CONTEXT_KEY = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


class CheckpointError(LoraStackError):
    """A base checkpoint cannot be used: ``path`` names it, ``fault`` says why."""

    def __init__(self, path: str | Path, fault: str) -> None:
        self.path, self.fault = str(path), fault
        super().__init__(f"checkpoint {self.path}: {fault}")


def checkpoint_key(target: Target) -> str:
    return f"{target.module}.{target.param}"


def detect_family(keys: Iterable[str], shapes: dict[str, tuple[int, ...]] | None = None) -> Family | None:
    keyset = set(keys)
    for key, family in _FAMILY_MARKERS:
        if key in keyset:
            return family
    if shapes and _CONTEXT_KEY in shapes:  # a UNet-only file: the cross-attention width tells SD1 from SD2
        return {768: Family.SD1, 1024: Family.SD2}.get(shapes[_CONTEXT_KEY][1])
    return None


class BaseCheckpoint:
    """A checked, lazily read base checkpoint. Never written to."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.file = LoraFile(self.path)
        except LoraFileError as e:
            raise CheckpointError(self.path, e.fault) from e
        self.family = detect_family(self.file.keys, self.file.shapes)
        if self.family is None:
            raise CheckpointError(
                self.path, "is not an SD1, SD2 or SDXL checkpoint with the WebUI's key names (model.diffusion_model.…)"
            )
        self._last: tuple[str, torch.Tensor] | None = None

    @property
    def metadata(self) -> dict[str, str]:
        return self.file.metadata

    def fault(self, target: Target, shape: tuple[int, ...] | None = None) -> str | None:
        """Why ``target`` cannot be read from this checkpoint (None when it can)."""
        key = checkpoint_key(target)
        if key not in self.file.shapes:
            return f"has no tensor {key!r} (a LoRA of the stack changes it)"
        full = self.file.shapes[key]
        if target.rows is not None and (len(full) < 1 or target.rows[1] > full[0]):
            return f"tensor {key!r} {full} has no rows {target.rows[0]}:{target.rows[1]}"
        if shape is not None:
            got = (target.rows[1] - target.rows[0], *full[1:]) if target.rows is not None else full
            if tuple(got) != tuple(shape):
                return f"tensor {key!r} has shape {tuple(got)}, the {self.family.value} model has {tuple(shape)}"
        return None

    def tensor(self, key: str) -> torch.Tensor:
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        t = self.file.tensor(key)
        self._last = (key, t)
        return t

    def weight(self, target: Target, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
        """The target's base value (its row block for q/k/v), as ``dtype`` on ``device``."""
        fault = self.fault(target)
        if fault:
            raise CheckpointError(self.path, fault)
        t = self.tensor(checkpoint_key(target))
        if target.rows is not None:
            t = t[target.rows[0] : target.rows[1]]
        return t.to(device=device, dtype=dtype)
