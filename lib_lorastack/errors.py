"""Typed errors. Every message names the thing (file, LoRA, layer, tag) and the fault."""

from __future__ import annotations

from pathlib import Path


class LoraStackError(Exception):
    """Base of every error this package raises on purpose."""


class LoraFileError(LoraStackError):
    """A LoRA file cannot be used. ``path`` names the file, ``fault`` says what is wrong."""

    def __init__(self, path: str | Path, fault: str) -> None:
        self.path = str(path)
        self.fault = fault
        super().__init__(f"{self.path}: {fault}")


class NotSafetensorsError(LoraFileError):
    """Not a .safetensors file (pickled .pt/.ckpt are refused, never unpickled)."""


class CorruptFileError(LoraFileError):
    """Truncated file, unreadable or inconsistent safetensors header."""


class TensorShapeError(LoraFileError):
    """A tensor's shape does not fit its key (or the module it targets)."""


class NonFiniteError(LoraFileError):
    """NaN or Inf values in a tensor."""


class NoUsableKeysError(LoraFileError):
    """No key of the file maps to a module of the model."""


class UnsupportedModelError(LoraFileError):
    """A LoRA for a model family that is recognised but not supported (SD3, Flux), or the wrong base model."""


class PatchError(LoraStackError):
    """Applying a stack failed; the model was restored to its state before the call.

    ``lora`` and ``layer`` name where it failed (either may be None when not known).
    """

    def __init__(self, message: str, *, lora: str | None = None, layer: str | None = None) -> None:
        self.lora = lora
        self.layer = layer
        where = ", ".join(p for p in (f"LoRA {lora!r}" if lora else "", f"layer {layer}" if layer else "") if p)
        super().__init__(f"{where}: {message}" if where else message)
