"""A stack request (names, strengths, block specs) → the engine's stack (loaded LoRAs, per-module weights)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..engine import StackLayer
from ..errors import LoraFileError
from ..formats.loader import load_lora
from ..formats.lora import ParsedLora
from ..formats.targets import Family
from ..syntax import StackEntry, StackRequest
from ..syntax.lbw import BlockWeights, resolve_block_weights
from .catalog import CatalogEntry, LoraCatalog


@dataclass
class ResolvedStack:
    layers: list[StackLayer]
    messages: list[str] = field(default_factory=list)  # one per LoRA that could not be used, naming it and why
    block_weights: dict[str, BlockWeights] = field(default_factory=dict)
    entries: list[StackEntry] = field(default_factory=list)  # the request entry of each layer (same order)
    found: list[CatalogEntry] = field(default_factory=list)  # the index entry of each layer (same order)


class LoraCache:
    """Parsed LoRAs by file identity, so that a stack change does not re-read unchanged files."""

    def __init__(self) -> None:
        self._items: dict[tuple, ParsedLora] = {}

    def load(self, path, family: Family, dyn: int | None) -> ParsedLora:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns, family, dyn)
        if key not in self._items:
            self._items[key] = load_lora(path, family, dyn=dyn)
        return self._items[key]


def resolve_request(
    request: StackRequest,
    catalog: LoraCatalog,
    family: Family | str,
    *,
    presets: Mapping[str, str] | None = None,
    elemental_presets: Mapping[str, str] | None = None,
    seed: int = 0,
    cache: LoraCache | None = None,
) -> ResolvedStack:
    """Load every entry's LoRA for ``family``; a LoRA that cannot be used is left out with a message, the rest
    still applies."""
    family = Family(family)
    cache = cache or LoraCache()
    out = ResolvedStack([])
    for entry in request.entries:
        found = catalog.find(entry.name)
        if found is None:
            out.messages.append(catalog.not_found_message(entry.name))
            continue
        if found.fault:
            out.messages.append(f"LoRA {entry.name!r} ({found.path}): {found.fault}")
            continue
        try:
            lora = cache.load(found.path, family, entry.dyn)
        except LoraFileError as e:
            out.messages.append(f"LoRA {entry.name!r}: {e}")
            continue
        if lora.problems:
            out.messages.append(f"LoRA {entry.name!r}: {len(lora.problems)} module(s) skipped: {lora.problems[0]}")
        weight_fn = None
        if entry.lbw is not None or entry.lbwe is not None:
            bw = resolve_block_weights(
                family, entry.lbw, lbwe=entry.lbwe, x=entry.x, presets=presets, elemental_presets=elemental_presets, seed=seed
            )
            out.block_weights[entry.name] = bw
            out.messages += [f"LoRA {entry.name!r}: {note}" for note in bw.notes]
            weight_fn = None if bw.is_identity else bw.weight_for
        out.layers.append(StackLayer(lora, entry.te, entry.unet, weight_fn, entry.start, entry.stop))
        out.entries.append(entry)
        out.found.append(found)
    return out
