"""The stack state across jobs, host-free: one engine per loaded model, the current stack, what each job applied.

The WebUI adapter calls ``activate`` when a job's extra networks activate (first pass, hires pass, each batch), with
the arguments of every ``<lora:…>``/``<lyco:…>`` tag in the WebUI's order; ``set_step`` from the sampler's per-step
callback; ``release`` before a model's weights are replaced or the model is unloaded. Everything a user must see
comes back as plain text in ``Activation``: nothing here prints, raises for a user's mistake, or imports the WebUI.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from ..engine import ApplyReport, PatchEngine
from ..errors import PatchError
from ..formats.lora import ParsedLora
from ..formats.targets import Family, Target
from ..schedule import steps_text
from ..stack import LoraCache, LoraCatalog, ResolvedStack, resolve_request
from ..stack.catalog import CatalogEntry
from ..syntax import StackEntry, StackRequest, format_number, parse_prompt
from .infotext import StackRecord, lora_hashes_value, stack_value
from .options import StackOptions


@dataclass(frozen=True)
class ModelHandle:
    """A loaded model as the session sees it. ``key`` identifies this model object with these weights (the
    adapter gives a new key after the weights are reloaded)."""

    key: object
    family: Family
    modules: Mapping[str, torch.nn.Module]
    name: str = ""
    # hosts whose layers differ from the checkpoint's (Forge's split q/k/v): each target → the one in ``modules``
    translate: Callable[[Target], Target] | None = None


@dataclass(frozen=True)
class LoraUse:
    """One LoRA as applied: for the infotext and the console."""

    mentioned: str  # the name as typed
    file: str  # the file's stem
    short_hash: str | None
    entry: StackEntry
    block_vector: tuple[float, ...] | None  # resolved per-block weights, the family's full layout

    def record(self) -> StackRecord:
        lbw = None if self.block_vector is None else ",".join(format_number(v) for v in self.block_vector)
        entry = replace(self.entry, lbw=lbw, x=None if lbw is not None else self.entry.x, span=None)
        return StackRecord(entry, self.short_hash)


@dataclass
class Activation:
    uses: list[LoraUse] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # each names the LoRA or tag and the fault
    report: ApplyReport | None = None
    mode: str = "fused"
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        r = self.report
        return r is not None and bool(r.weight_writes or r.layers_online or r.layers_restored)

    def lora_hashes(self) -> str:
        return lora_hashes_value([(u.mentioned, u.short_hash or "") for u in self.uses])

    def stack_field(self) -> str:
        return stack_value([u.record() for u in self.uses])

    def console_line(self) -> str | None:
        """One line when the stack changed (or something went wrong), else None."""
        if not self.changed and not self.messages:
            return None
        r = self.report or ApplyReport()
        if self.uses:
            names = ", ".join(_short(u) for u in self.uses)
            what = f"{names} ({self.mode}): {r.layers_written} weights written, {r.layers_online} layers online"
        else:
            what = "no LoRA"
        if r.layers_restored:
            what += f", {r.layers_restored} restored"
        line = f"[LoRA Stack] {what}, {self.seconds * 1000:.0f} ms"
        return line + "".join(f"\n[LoRA Stack]   {m}" for m in self.messages)


def _short(use: LoraUse) -> str:
    e = use.entry
    strengths = format_number(e.te) if e.te == e.unet else f"{format_number(e.te)}/{format_number(e.unet)}"
    extra = " blocks" if use.block_vector is not None else ""
    extra += f" {steps_text(e.start, e.stop)}" if e.start is not None or e.stop is not None else ""
    return f"{use.mentioned} {strengths}{extra}"


@dataclass
class _ModelState:
    engine: PatchEngine
    engine_options: tuple
    scheduled: bool = False


class StackSession:
    """``catalog()``: the LoRA index to resolve names in. ``options()``: the current settings. ``short_hash(entry)``:
    the WebUI's short hash of an index entry (or None). ``block_presets()`` / ``elemental_presets()``: the user's
    lora-block-weight presets, if any."""

    def __init__(
        self,
        *,
        catalog: Callable[[], LoraCatalog],
        options: Callable[[], StackOptions],
        short_hash: Callable[[CatalogEntry], str | None],
        block_presets: Callable[[], Mapping[str, str]] | None = None,
        elemental_presets: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.catalog = catalog
        self.options = options
        self.short_hash = short_hash
        self.block_presets = block_presets or dict
        self.elemental_presets = elemental_presets or dict
        self.lora_cache = LoraCache()
        self._models: dict[object, _ModelState] = {}
        self._translations: dict[object, dict[int, tuple[ParsedLora, ParsedLora]]] = {}

    # ----------------------------------------------------------------- jobs
    def activate(
        self, model: ModelHandle, tags: Sequence[Sequence[str]], *, seed: int = 0, multiplier: float = 1.0, mode: str | None = None
    ) -> Activation:
        """Apply the stack the tags ask for (each tag as the WebUI split its arguments: name first), every strength
        times ``multiplier``; ``mode`` overrides the setting for this job."""
        start = time.perf_counter()
        options = self.options()
        if mode is not None and mode != options.mode:
            options = replace(options, mode=mode)
        out = Activation(mode=options.mode)
        texts = [tag_text(items) for items in tags if items]
        text = " ".join(texts)
        request = parse_prompt(text, presets=self.block_presets())
        out.messages += [f"{_tag_at(texts, d.span[0])}: {d.message}" for d in request.diagnostics]
        if multiplier != 1.0:
            scaled = tuple(replace(e, te=e.te * multiplier, unet=e.unet * multiplier) for e in request.entries)
            request = replace(request, entries=scaled)
        state = self._state(model, options)
        resolved = self._resolve(request, model, seed)
        out.messages += resolved.messages
        layers, entries, found = list(resolved.layers), list(resolved.entries), list(resolved.found)
        if model.translate is not None:
            layers = [replace(layer, lora=self._translated(layer.lora, model)) for layer in layers]
        state.scheduled = any(layer.start is not None or layer.stop is not None for layer in layers)
        step = 0 if state.scheduled else None
        while True:
            try:
                out.report = state.engine.apply(layers, step=step)
                break
            except PatchError as exc:
                failed = set((exc.lora or "").split(", "))
                keep = [i for i, layer in enumerate(layers) if layer.lora.name not in failed]
                out.messages.append(f"LoRA {exc.lora or '?'}: could not be applied at {exc.layer or '?'} ({exc}); left out")
                if len(keep) == len(layers):
                    return self._finish(out, start)  # the engine left the model as it was before this call
                layers, entries, found = [layers[i] for i in keep], [entries[i] for i in keep], [found[i] for i in keep]
        out.messages += _skipped_messages(out.report.skipped)
        for entry, hit in zip(entries, found):
            bw = resolved.block_weights.get(entry.name)
            vector = None if bw is None or bw.is_identity else tuple(bw.vector.values())
            out.uses.append(LoraUse(entry.name, hit.name, self._hash(hit), entry, vector))
        return self._finish(out, start)

    def set_step(self, model_key: object, step: int) -> ApplyReport | None:
        """A sampling step begins: scheduled LoRAs enter or leave (nothing to do for a stack without schedules)."""
        state = self._models.get(model_key)
        if state is None or not state.scheduled:
            return None
        return state.engine.set_step(step)

    def release(self, model_key: object, *, restore: bool = True) -> ApplyReport | None:
        """Before the model's weights are replaced or it is unloaded: restore what we patched (``restore``) and forget
        the model. Without ``restore`` the patches are dropped with the weights they were in."""
        state = self._models.pop(model_key, None)
        self._translations.pop(model_key, None)
        if state is None or not restore:
            return None
        return state.engine.clear()

    def clear(self) -> list[ApplyReport]:
        """Every model back to its pristine weights; the session holds no patch afterwards."""
        return [r for key in list(self._models) if (r := self.release(key)) is not None]

    def model_keys(self) -> list[object]:
        """The models the session holds state for."""
        return list(self._models)

    def patched(self, model_key: object) -> dict:
        state = self._models.get(model_key)
        return state.engine.patched() if state is not None else {}

    def engine(self, model_key: object) -> PatchEngine | None:
        state = self._models.get(model_key)
        return None if state is None else state.engine

    # ----------------------------------------------------------------- internals
    def _state(self, model: ModelHandle, options: StackOptions) -> _ModelState:
        wanted = (options.mode, options.engine_backups, options.cache_mib)
        state = self._models.get(model.key)
        if state is not None and state.engine_options != wanted:
            state.engine.clear()  # settings changed: start over with an engine that follows them
            state = None
        if state is None:
            engine = PatchEngine(model.modules, mode=options.mode, backup_device=options.engine_backups, cache_bytes=options.cache_mib << 20)
            state = self._models[model.key] = _ModelState(engine, wanted)
        return state

    def _translated(self, lora: ParsedLora, model: ModelHandle) -> ParsedLora:
        """``lora`` with its targets in the host's layout; the same object for as long as ``lora`` is cached, so
        that the engine sees an unchanged stack as unchanged."""
        memo = self._translations.setdefault(model.key, {})
        hit = memo.get(id(lora))
        if hit is not None and hit[0] is lora:
            return hit[1]
        assert model.translate is not None
        modules = {model.translate(t): a for t, a in lora.modules.items()}
        out = replace(lora, modules=modules)
        if len(memo) > 64:
            memo.clear()
        memo[id(lora)] = (lora, out)
        return out

    def _resolve(self, request: StackRequest, model: ModelHandle, seed: int) -> ResolvedStack:
        return resolve_request(
            request, self.catalog(), model.family, presets=self.block_presets(),
            elemental_presets=self.elemental_presets(), seed=seed, cache=self.lora_cache,
        )  # fmt: skip

    def _hash(self, entry: CatalogEntry) -> str | None:
        try:
            return self.short_hash(entry)
        except OSError:
            return None

    @staticmethod
    def _finish(out: Activation, start: float) -> Activation:
        out.seconds = time.perf_counter() - start
        return out


def tag_text(items: Sequence[str]) -> str:
    """A tag as the user wrote it, from the WebUI's split arguments."""
    return "<lora:" + ":".join(str(i) for i in items) + ">"


def _tag_at(texts: Sequence[str], position: int) -> str:
    """The tag (of ``" ".join(texts)``) that contains ``position``."""
    start = 0
    for t in texts:
        if position < start + len(t) + 1:
            return t
        start += len(t) + 1
    return texts[-1] if texts else ""


def _skipped_messages(skipped: Sequence) -> list[str]:
    """Targets the model lacks or whose shapes do not fit, one message per LoRA."""
    by_lora: dict[str, list] = {}
    for s in skipped:
        by_lora.setdefault(s.lora, []).append(s)
    out = []
    for lora, items in by_lora.items():
        first = items[0]
        out.append(f"LoRA {lora!r}: {len(items)} layer(s) not applied (e.g. {first.target}: {first.reason})")
    return out

