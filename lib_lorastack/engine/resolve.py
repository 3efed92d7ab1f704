"""Checkpoint-style module names → the live modules of a model."""

from __future__ import annotations

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
