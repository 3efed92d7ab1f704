"""The WebUI's real module structure of SD1.5, SD2.1, SDXL and Flux.1: names, classes and weight shapes.

Shipped from ``../shared/model-tables`` as gzipped JSON in ``data/``: SD from A1111 v1.10.1 built on the meta
device (checkpoint-style names, no ``.wrapped``), Flux.1-dev from Forge's own loader (``flux1.json``: Forge's
patcher names ``diffusion_model.…``, ``clip_l.…``, ``t5xxl.…``; schnell lacks only ``guidance_in``). See ``targets.py``.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from .targets import Family, Target

_DATA_FILES = {
    Family.SD1: "sd1.json.gz", Family.SD2: "sd2.json.gz", Family.SDXL: "sdxl.json.gz", Family.FLUX: "flux1.json.gz",
}  # fmt: skip


@dataclass(frozen=True)
class ModuleInfo:
    """One parameter-owning module. ``base`` is the torch.nn class an isinstance check sees
    (``Linear``, ``Conv2d``, ``GroupNorm``, ``LayerNorm``, ``Embedding``, ``MultiheadAttention``, ``Module``).
    Forge's ``ForgeOperations.Linear`` is ``type`` ``Linear`` with ``base`` ``Module`` (not a torch Linear)."""

    name: str
    type: str
    base: str
    params: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class ModelTable:
    family: Family
    model: str
    modules: dict[str, ModuleInfo]

    def shape_of(self, target: Target) -> tuple[int, ...] | None:
        """Shape of the target's parameter (its row block, if sliced), or None if the model lacks it."""
        info = self.modules.get(target.module)
        if info is None or target.param not in info.params:
            return None
        shape = info.params[target.param]
        if target.rows is not None:
            start, stop = target.rows
            shape = (stop - start, *shape[1:])
        return shape


@cache
def load_table(family: Family) -> ModelTable:
    """The module table of a supported family."""
    family = Family(family)
    if family not in _DATA_FILES:
        raise ValueError(f"no module table for {family.value!r} (supported: sd1, sd2, sdxl, flux)")
    raw = resources.files(__package__).joinpath("data", _DATA_FILES[family]).read_bytes()
    doc = json.loads(gzip.decompress(raw))
    modules = {
        name: ModuleInfo(name, type_, base, {p: tuple(s) for p, s in params.items()})
        for name, type_, base, params in doc["modules"]
    }
    return ModelTable(family=family, model=doc["model"], modules=modules)
