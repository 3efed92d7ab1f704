"""The stack doctor and the bake for the panel, host-free: the stack as it would apply (the prompt's tags, then the
panel's own rows, times the multiplier), measured or baked into one LoRA file in the LoRA folder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from ..doctor import StackInputError, bake_lora, diagnose
from ..doctor.basefile import BaseCheckpoint, CheckpointError
from ..doctor.progress import ProgressFn, no_progress
from ..doctor.stack import load_stack, sources_from_request
from ..errors import LoraStackError
from ..formats.targets import Family
from ..stack import LoraCatalog
from ..syntax import StackRequest, parse_prompt
from .panel import PanelState, panel_tags


class DoctorJobError(LoraStackError):
    """What stops the doctor or the bake, in words for the user."""


def stack_request(state: PanelState, prompt: str, presets: Mapping[str, str] | None = None) -> StackRequest:
    tags, _notes = panel_tags(state, prompt)
    text = prompt + " " + " ".join("<lora:" + ":".join(t) + ">" for t in tags)
    request = parse_prompt(text, presets=presets)
    m = state.multiplier
    if m != 1.0:
        request = replace(request, entries=tuple(replace(e, te=e.te * m, unet=e.unet * m) for e in request.entries))
    return request


def _items(state, prompt, catalog, family, presets, seed):
    request = stack_request(state, prompt, presets)
    if not request.entries:
        raise DoctorJobError("no LoRA in the stack: add rows or <lora:…> tags first")
    try:
        return load_stack(sources_from_request(request, catalog), family, presets=presets, seed=seed)
    except StackInputError as e:
        raise DoctorJobError("; ".join(e.problems)) from None


def run_doctor(
    state: PanelState, prompt: str, catalog: LoraCatalog, family: Family | None, *,
    checkpoint: str | None = None, presets: Mapping[str, str] | None = None, seed: int = 0,
    progress: ProgressFn = no_progress,
) -> tuple[str, str]:  # fmt: skip
    """The report's text and the path of its heatmap PNG."""
    family, items = _items(state, prompt, catalog, family, presets, seed)
    base = None
    if checkpoint:
        try:
            base = BaseCheckpoint(checkpoint)
        except CheckpointError as e:
            raise DoctorJobError(f"the checkpoint cannot be read for the comparison: {e}") from None
    report = diagnose(items, family, base=base, progress=progress)
    handle, path = tempfile.mkstemp(prefix="lorastack-doctor-", suffix=".png")
    with os.fdopen(handle, "wb") as f:
        f.write(report.png())
    return report.text(), path


def run_bake(
    state: PanelState, prompt: str, catalog: LoraCatalog, family: Family | None, folder: str | Path, name: str, *,
    presets: Mapping[str, str] | None = None, seed: int = 0, progress: ProgressFn = no_progress,
) -> str:  # fmt: skip
    """Bake the stack exactly into ``folder/name.safetensors`` (never over an existing file); a message."""
    name = name.strip()
    if not name or any(c in name for c in '/\\:<>"|?*\0') or name.startswith("."):
        raise DoctorJobError(f"{name!r} is not a file name for the baked LoRA (no path, no ':<>\"|?*')")
    family, items = _items(state, prompt, catalog, family, presets, seed)
    baked = bake_lora(items, family, method="exact", progress=progress)
    try:
        out = baked.save(Path(folder) / f"{name}.safetensors", items)
    except (OSError, ValueError, LoraStackError) as e:
        raise DoctorJobError(f"could not write {name}.safetensors: {e}") from None
    notes = "; ".join(baked.notes)
    return f"baked {len(items)} LoRA(s) into {out.name} ({len(baked.modules)} modules)" + (f"; {notes}" if notes else "")
