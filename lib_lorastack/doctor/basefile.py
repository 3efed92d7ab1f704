"""The base checkpoint (a WebUI ``.safetensors`` model): its family and the weights a stack changes.

Keys are the WebUI's checkpoint names: module name + ``.`` + parameter (``model.diffusion_model.….weight``,
``cond_stage_model.transformer.….weight``, ``conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight``).
Flux files come in three spellings of Forge's names (``diffusion_model.double_blocks.0.img_attn.qkv``): all-in-one
(``model.diffusion_model.…``, ``text_encoders.clip_l.…``, ``text_encoders.t5xxl.…``), the transformer alone with
bare BFL names (``double_blocks.0.…``), or Forge's own; the file's spelling is found from its keys.
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
_FLUX_QKV = "double_blocks.0.img_attn.qkv.weight"
# (a key only that spelling has, how Forge's roots are written in it)
_FLUX_SPELLINGS: tuple[tuple[str, dict[str, str]], ...] = (
    ("model.diffusion_model." + _FLUX_QKV,
     {"diffusion_model.": "model.diffusion_model.", "clip_l.": "text_encoders.clip_l.", "t5xxl.": "text_encoders.t5xxl."}),
    ("diffusion_model." + _FLUX_QKV, {}),
    (_FLUX_QKV, {"diffusion_model.": ""}),
)  # fmt: skip
_CONTEXT_KEY = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


class CheckpointError(LoraStackError):
    """A base checkpoint cannot be used: ``path`` names it, ``fault`` says why."""

    def __init__(self, path: str | Path, fault: str) -> None:
        self.path, self.fault = str(path), fault
        super().__init__(f"checkpoint {self.path}: {fault}")


def checkpoint_key(target: Target) -> str:
    return f"{target.module}.{target.param}"


def flux_spelling(keys: Iterable[str]) -> dict[str, str] | None:
    """How a Flux file writes Forge's roots (``{"diffusion_model.": "model.diffusion_model.", …}``), None if not Flux."""
    keyset = set(keys)
    return next((roots for marker, roots in _FLUX_SPELLINGS if marker in keyset), None)


def detect_family(keys: Iterable[str], shapes: dict[str, tuple[int, ...]] | None = None) -> Family | None:
    keyset = set(keys)
    if flux_spelling(keyset) is not None:
        return Family.FLUX
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
                self.path,
                "is not an SD1, SD2, SDXL or Flux checkpoint with the WebUI's key names (model.diffusion_model.…)",
            )
        self._roots = flux_spelling(self.file.keys) or {}
        self._last: tuple[str, torch.Tensor] | None = None

    @property
    def metadata(self) -> dict[str, str]:
        return self.file.metadata

    def key(self, target: Target) -> str:
        """The target's tensor name in this file."""
        key = checkpoint_key(target)
        for root, written in self._roots.items():
            if key.startswith(root):
                return written + key[len(root) :]
        return key

    def fault(self, target: Target, shape: tuple[int, ...] | None = None) -> str | None:
        """Why ``target`` cannot be read from this checkpoint (None when it can)."""
        key = self.key(target)
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
        t = self.tensor(self.key(target))
        if target.rows is not None:
            t = t[target.rows[0] : target.rows[1]]
        return t.to(device=device, dtype=dtype)
