"""The stack the doctor, bake and merge work on: each LoRA with what the user asked for (strengths, block weights,
schedule), and strict loading from prompts, LoRA folders and plain file arguments (every fault named)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from ..engine.plan import StackLayer
from ..errors import LoraFileError, LoraStackError
from ..formats.loader import load_lora
from ..formats.lora import ParsedLora
from ..formats.targets import Family, Target
from ..stack.catalog import LoraCatalog
from ..syntax import StackEntry, StackRequest, parse_prompt
from ..syntax.blocks import slot_space
from ..syntax.lbw import DEFAULT_PRESETS, BlockWeights, resolve_block_weights, spec_fault


class StackInputError(LoraStackError):
    """The stack cannot be used as given; ``problems`` names every LoRA or argument at fault and why."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, eq=False)
class StackItem:
    """One LoRA of a stack: the loaded file, the entry as the user wrote it, and its resolved block weights."""

    lora: ParsedLora
    entry: StackEntry
    block_weights: BlockWeights | None = None
    path: str | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    @cached_property
    def layer(self) -> StackLayer:
        bw = self.block_weights
        weight_fn = None if bw is None or bw.is_identity else bw.weight_for
        e = self.entry
        return StackLayer(self.lora, e.te, e.unet, weight_fn, e.start, e.stop)

    def strength_for(self, target: Target) -> float:
        """TE or UNet strength × block weight: the factor this LoRA's change gets on ``target``."""
        return self.layer.strength_for(target)

    @property
    def slots(self) -> tuple[float, ...]:
        """The LBW slot weights in effect (26, Flux: 61; all 1 without block weights)."""
        if self.block_weights is not None:
            return self.block_weights.slots
        return (1.0,) * len(slot_space(self.lora.family or Family.SD1))


def stack_item(
    lora: ParsedLora,
    te: float = 1.0,
    unet: float | None = None,
    *,
    name: str | None = None,
    lbw: str | None = None,
    lbwe: str | None = None,
    x: float | None = None,
    start: int | None = None,
    stop: int | None = None,
    family: Family | str | None = None,
    presets: Mapping[str, str] | None = None,
    path: str | None = None,
) -> StackItem:
    """A stack item from a loaded LoRA (library use and tests). A bad ``lbw`` spec raises ``StackInputError``."""
    entry = StackEntry(name or lora.name, te, te if unet is None else unet, None, lbw, lbwe, x, start, stop)
    return _item(lora, entry, family or lora.family, presets, 0, path or lora.path)


def _item(
    lora: ParsedLora, entry: StackEntry, family, presets: Mapping[str, str] | None, seed: int, path: str | None
) -> StackItem:
    if family is None:
        raise StackInputError([f"LoRA {entry.name!r}: its model family is unknown; give the family"])
    bw = None
    if entry.lbw is not None or entry.lbwe is not None:
        if entry.lbw is not None:
            fault = spec_fault(entry.lbw, {**DEFAULT_PRESETS, **(presets or {})})
            if fault:
                raise StackInputError([f"LoRA {entry.name!r}: lbw={entry.lbw}: {fault}"])
        bw = resolve_block_weights(family, entry.lbw, lbwe=entry.lbwe, x=entry.x, presets=presets, seed=seed)
        if bw.notes:
            raise StackInputError([f"LoRA {entry.name!r}: {note}" for note in bw.notes])
    return StackItem(lora, entry, bw, path)


@dataclass(frozen=True)
class StackSource:
    """Where one stack entry's LoRA file is, before loading."""

    entry: StackEntry
    path: Path
    problems: list[str] = field(default_factory=list)  # faults: the source cannot be used
    warnings: list[str] = field(default_factory=list)


_SAFE_NAME = re.compile(r"[^:<>\s]+")


def parse_file_arg(text: str) -> StackSource:
    """``FILE[:WEIGHT[:more tag arguments]]`` → a source. The tag arguments are those of ``<lora:NAME:…>``
    (``0.8``, ``0.5:0.8``, ``0.8:lbw=OUTALL``, ``1:stop=10``). A path that itself contains ``:`` is found by
    its ``.safetensors`` ending."""
    lower = text.lower()
    cut = lower.rfind(".safetensors:")
    if cut >= 0:
        path_text, args = text[: cut + len(".safetensors")], text[cut + len(".safetensors:") :]
    elif lower.endswith(".safetensors") or Path(text).exists() or ":" not in text:
        path_text, args = text, ""
    else:
        path_text, _, args = text.rpartition(":")
        if not _looks_numeric(args.split(":")[0]):
            path_text, args = text, ""
    path = Path(path_text)
    name = path.stem if _SAFE_NAME.fullmatch(path.stem) else "lora"
    if not args:
        return StackSource(StackEntry(name), path)
    request = parse_prompt(f"<lora:{name}:{args}>")
    errors = [d.message for d in request.diagnostics if d.severity == "error"]
    if errors or not request.entries:
        return StackSource(StackEntry(name), path, [f"{text!r}: {errors[0] if errors else 'cannot be read'}"])
    warnings = [f"{text!r}: {d.message}" for d in request.diagnostics if d.severity == "warning"]
    return StackSource(request.entries[0], path, [], warnings)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def sources_from_request(request: StackRequest, catalog: LoraCatalog) -> list[StackSource]:
    """The tags of a parsed prompt → sources found through ``catalog``; errors in the prompt and unknown or broken
    LoRAs raise ``StackInputError`` naming each."""
    problems = [d.message for d in request.diagnostics if d.severity == "error"]
    out: list[StackSource] = []
    for entry in request.entries:
        found = catalog.find(entry.name)
        if found is None:
            problems.append(catalog.not_found_message(entry.name))
        elif found.fault:
            problems.append(f"LoRA {entry.name!r} ({found.path}): {found.fault}")
        else:
            out.append(StackSource(entry, found.path))
    if problems:
        raise StackInputError(problems)
    return out


def load_stack(
    sources: Sequence[StackSource],
    family: Family | str | None = None,
    *,
    presets: Mapping[str, str] | None = None,
    seed: int = 0,
) -> tuple[Family, list[StackItem]]:
    """Load every source for ``family`` (detected from the LoRAs by majority when None). Any LoRA that cannot be
    used (missing, broken, another base model, a bad block spec) raises ``StackInputError`` naming each."""
    if not sources:
        raise StackInputError(["the stack is empty: give <lora:…> tags with --lora-dir, or LoRA files"])
    problems = [p for s in sources for p in s.problems]
    loaded: list[ParsedLora | None] = []
    for s in sources:
        if not s.path.is_file():
            problems.append(f"LoRA {s.entry.name!r}: file not found: {s.path}")
            loaded.append(None)
            continue
        try:
            loaded.append(load_lora(s.path, family, dyn=s.entry.dyn))
        except LoraFileError as e:
            problems.append(f"LoRA {s.entry.name!r}: {e}")
            loaded.append(None)
    if family is None:
        counts = Counter(p.family for p in loaded if p is not None and p.family is not None)
        if not counts:
            raise StackInputError(problems or ["no LoRA of the stack could be read"])
        chosen = counts.most_common(1)[0][0]
        for i, (s, parsed) in enumerate(zip(sources, loaded)):
            if parsed is not None and parsed.family != chosen:
                try:
                    loaded[i] = load_lora(s.path, chosen, dyn=s.entry.dyn)
                except LoraFileError as e:
                    problems.append(f"LoRA {s.entry.name!r}: {e} (the other LoRAs of the stack are {chosen.value.upper()})")
    else:
        chosen = Family(family)
    items: list[StackItem] = []
    for s, parsed in zip(sources, loaded):
        if parsed is None:
            continue
        try:
            items.append(_item(parsed, s.entry, chosen, presets, seed, str(s.path)))
        except StackInputError as e:
            problems += e.problems
    if problems:
        raise StackInputError(problems)
    return chosen, items


def with_entry(item: StackItem, entry: StackEntry, *, presets: Mapping[str, str] | None = None) -> StackItem:
    """The same LoRA under another entry (e.g. a suggested weight or block vector)."""
    return _item(item.lora, entry, item.lora.family, presets, 0, item.path)


def rename_duplicates(items: list[StackItem]) -> list[StackItem]:
    """Make names unique for display (``name``, ``name#2``)."""
    seen: Counter[str] = Counter()
    out = []
    for it in items:
        seen[it.name] += 1
        if seen[it.name] > 1:
            it = StackItem(it.lora, replace(it.entry, name=f"{it.name}#{seen[it.name]}"), it.block_weights, it.path)
        out.append(it)
    return out
