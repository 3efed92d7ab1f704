"""Checkpoint-style module names → the live modules of a model."""

from __future__ import annotations

from collections.abc import Callable

import torch


def resolve_modules(root: torch.nn.Module, prefix: str = "") -> dict[str, torch.nn.Module]:
    """Every module of ``root`` under its checkpoint-style name, with ``prefix`` prepended.

    The WebUI wraps its text encoders after loading (``cond_stage_model.wrapped.…``,
    ``conditioner.embedders.0.wrapped.…``, ``…token_embedding.wrapped``); the ``wrapped`` segments are
    dropped so that names match LoRA targets. When a wrapper and the module it wraps would get the same name,
    the inner module (the one that owns the parameters) wins.
    """
    out: dict[str, torch.nn.Module] = {}
    for name, module in root.named_modules():
        clean = ".".join(part for part in name.split(".") if part != "wrapped")
        full = f"{prefix}{clean}" if clean else prefix.rstrip(".")
        if full in out and not any(True for _ in module.parameters(recurse=False)):
            continue
        out[full] = module
    return out


def resolve_renamed(root: torch.nn.Module, rename: Callable[[str], str | None], into: dict | None = None) -> dict[str, torch.nn.Module]:
    """Every module of ``root`` under ``rename(its name)`` (left out where that is None), the ``wrapped`` segments
    dropped as in ``resolve_modules``: for hosts whose own names are not checkpoint-style (Forge's patcher roots,
    see ``formats/forge_names.py``). Matching is by name, never by class: Forge's Linear is no ``nn.Linear``."""
    out: dict[str, torch.nn.Module] = {} if into is None else into
    for name, module in root.named_modules():
        clean = ".".join(part for part in name.split(".") if part != "wrapped")
        ours = rename(clean) if clean else None
        if ours is None or (ours in out and not any(True for _ in module.parameters(recurse=False))):
            continue
        out[ours] = module
    return out
