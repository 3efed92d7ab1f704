"""A LoRA file (or state dict) → ``ParsedLora``: adapters by WebUI target, plus everything that did not map."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from ..adapters import build_adapter
from ..adapters.base import Adapter
from ..errors import NonFiniteError, NoUsableKeysError, TensorShapeError, UnsupportedModelError
from .files import LoraFile
from .flux_keys import map_flux_prefix
from .flux_names import REAL_DIMS, FluxDims, FluxHit, flux_dims
from .flux_remap import remap_adapter
from .keymap import PEFT, family_hint, foreign_family, map_prefix, split_key
from .lora import ParsedLora, UnmatchedKey
from .model_tables import load_table
from .targets import Family, Target

SUPPORTED = (Family.SD1, Family.SD2, Family.SDXL, Family.FLUX)


class _Group:
    """The keys of one module prefix."""

    def __init__(self, prefix: str, fmt: str) -> None:
        self.prefix = prefix
        self.format = fmt
        self.keys: dict[str, str] = {}  # suffix → file key


def _group_keys(keys: list[str]) -> tuple[dict[str, _Group], list[UnmatchedKey]]:
    groups: dict[str, _Group] = {}
    unmatched: list[UnmatchedKey] = []
    for key in keys:
        if key.startswith("bundle_emb."):
            unmatched.append(UnmatchedKey(key, "bundled textual-inversion embedding (not applied as a weight change)"))
            continue
        split = split_key(key)
        if split is None:
            unmatched.append(UnmatchedKey(key, "not a LoRA module key of any known format"))
            continue
        groups.setdefault(split.prefix, _Group(split.prefix, split.format)).keys[split.suffix] = key
    return groups, unmatched


def _peft_config(metadata: Mapping[str, str]) -> dict[str, dict]:
    """diffusers' ``lora_adapter_metadata`` (LoraConfig as JSON) per component ("" = one config for all)."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    if not isinstance(doc, dict):
        return {}
    per: dict[str, dict] = {}
    for key, value in doc.items():
        component, dot, field = key.partition(".")
        if dot and component in ("unet", "text_encoder", "text_encoder_2", "transformer"):
            per.setdefault(component, {})[field] = value
        else:
            per.setdefault("", {})[key] = value
    return per


def _pattern_value(patterns: Mapping[str, object], module: str) -> object | None:
    for pattern, value in patterns.items():  # PEFT's rule: the pattern matches the end of the dotted name
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return None


def _peft_alpha(config: dict[str, dict], prefix: str, rank: int) -> float | None:
    component, _, module = prefix.partition(".")
    if component not in ("unet", "text_encoder", "text_encoder_2", "transformer"):
        component, module = "", prefix
    cfg = config.get(component) or config.get("")
    if not cfg:
        return None
    alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module)
    alpha = float(alpha if alpha is not None else cfg.get("lora_alpha", rank))
    if cfg.get("use_rslora"):
        alpha = alpha * math.sqrt(rank)  # scale = alpha/√r, written as (alpha·√r)/r
    return alpha


ShapeOf = Callable[[Target], "tuple[int, ...] | None"]


def _hits(prefix: str, fmt: str, family: Family, dims: FluxDims | None) -> tuple[list[FluxHit], str]:
    """The targets (with the layout remap a Flux name may need) of one module prefix, and the format it proved."""
    if family is Family.FLUX:
        return map_flux_prefix(prefix, fmt, dims or REAL_DIMS)
    targets, proved = map_prefix(prefix, fmt, family)
    return [FluxHit(t) for t in targets], proved


def _shape_fault(adapter: Adapter, target: Target, family: Family, shape_of: ShapeOf | None = None) -> str | None:
    shape = (shape_of or load_table(family).shape_of)(target)
    if shape is None:
        return f"the {family.value} model has no parameter {target}"
    return adapter.validate(shape)


def _score(groups: dict[str, _Group], adapters: dict[str, Adapter], family: Family, shape_of: ShapeOf | None) -> int:
    score = 0
    dims = flux_dims(shape_of) if family is Family.FLUX else None
    for prefix, group in groups.items():
        adapter = adapters.get(prefix)
        if adapter is None:
            continue
        hits, fmt = _hits(prefix, group.format, family, dims)
        if fmt and all(_shape_fault(remap_adapter(adapter, h.remap), h.target, family, shape_of) is None for h in hits):
            score += 1
    return score


def parse_state_dict(
    tensors: Mapping[str, torch.Tensor] | Callable[[str], torch.Tensor],
    keys: list[str] | None = None,
    *,
    family: Family | str | None = None,
    name: str = "lora",
    metadata: Mapping[str, str] | None = None,
    path: str | None = None,
    strict: bool = False,
    dyn: int | None = None,
    shape_of: ShapeOf | None = None,
) -> ParsedLora:
    """Map a state dict (or a key → tensor reader with its keys) onto the WebUI modules of ``family``.

    Module-level faults (shape mismatch, NaN/Inf, unknown key sets) drop that module and are reported in
    ``problems``/``unmatched``; with ``strict`` the first one raises its typed error instead. File-level
    faults raise: no usable key, an SD3 LoRA, or a LoRA for another base model than ``family``.
    ``shape_of`` replaces the WebUI table's shapes (a model of the same structure but other widths; for Flux the
    row slices of the fused weights follow its widths).
    """
    metadata = dict(metadata or {})
    where = path or name
    get = tensors if callable(tensors) else tensors.__getitem__
    all_keys = list(keys if keys is not None else tensors.keys())  # type: ignore[union-attr]
    foreign = foreign_family(all_keys, metadata)
    groups, unmatched = _group_keys(all_keys)
    problems: list[str] = []
    peft_cfg = _peft_config(metadata)

    adapters: dict[str, Adapter] = {}
    for prefix, group in groups.items():
        module_tensors = {suffix: get(key) for suffix, key in group.keys.items()}
        bad = [s for s, t in module_tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            msg = f"module {prefix}: {', '.join(bad)} contain NaN or Inf values; module skipped"
            if strict:
                raise NonFiniteError(where, msg)
            problems.append(msg)
            unmatched.append(UnmatchedKey(prefix, "NaN or Inf values"))
            continue
        if group.format == PEFT and "alpha" not in module_tensors and "lora_down.weight" in module_tensors:
            alpha = _peft_alpha(peft_cfg, prefix, module_tensors["lora_down.weight"].shape[0])
            if alpha is not None:
                module_tensors["alpha"] = torch.tensor(alpha)
        try:
            adapters[prefix] = build_adapter(module_tensors, dyn=dyn)
        except (ValueError, KeyError, IndexError) as e:
            unmatched.append(UnmatchedKey(prefix, f"unknown adapter key set: {e}"))

    if not adapters:
        raise NoUsableKeysError(where, "has no LoRA module key of any known format (nothing to apply)")

    candidates = [Family(family)] if family is not None else list(SUPPORTED)
    scores = {f: _score(groups, adapters, f, shape_of if f == family else None) for f in SUPPORTED}
    if foreign is Family.SD3 and scores[Family.FLUX] == 0:  # (diffusers SD3 and Flux share some names)
        raise UnsupportedModelError(where, "is a SD3 LoRA; SD3 is not supported yet")
    best = max(SUPPORTED, key=lambda f: (scores[f], f == family_hint(metadata), f == foreign))
    if family is None:
        chosen = best
    else:
        chosen = candidates[0]
        if best != chosen and scores[chosen] * 2 < scores[best]:  # most modules fit another family far better
            raise UnsupportedModelError(
                where, f"is a LoRA for {best.value.upper()}, not for the {chosen.value.upper()} model in use"
            )
    if scores[chosen] == 0:
        raise NoUsableKeysError(where, f"none of its {len(adapters)} modules matches a layer of the {chosen.value} model")

    modules: dict[Target, Adapter] = {}
    formats: set[str] = set()
    dims = flux_dims(shape_of) if chosen is Family.FLUX else None
    for prefix, base_adapter in adapters.items():
        hits, fmt = _hits(prefix, groups[prefix].format, chosen, dims)
        if not hits:
            unmatched.append(UnmatchedKey(prefix, f"no layer of the {chosen.value} model has this name"))
            continue
        for hit in hits:
            target, adapter = hit.target, remap_adapter(base_adapter, hit.remap)
            fault = _shape_fault(adapter, target, chosen, shape_of)
            if fault:
                if strict:
                    raise TensorShapeError(where, f"module {prefix} → {target}: {fault}")
                problems.append(f"module {prefix} → {target}: {fault}; module skipped")
                unmatched.append(UnmatchedKey(prefix, fault))
                continue
            if target in modules:
                problems.append(f"module {prefix}: a second key set for {target}; the first one is kept")
                continue
            modules[target] = adapter
            formats.add(fmt)
    return ParsedLora(
        name=name,
        modules=modules,
        path=path,
        alias=metadata.get("ss_output_name") or name,
        family=chosen,
        format="+".join(sorted(formats)),
        metadata=metadata,
        unmatched=unmatched,
        problems=problems,
    )


def load_lora(
    path: str | Path,
    family: Family | str | None = None,
    *,
    name: str | None = None,
    strict: bool = False,
    dyn: int | None = None,
) -> ParsedLora:
    """Read a ``.safetensors`` LoRA and map it onto ``family`` (detected when None). See ``parse_state_dict``."""
    f = LoraFile(path)
    parsed = parse_state_dict(
        f.tensor, f.keys, family=family, name=name or f.stem, metadata=f.metadata, path=str(f.path), strict=strict, dyn=dyn
    )
    parsed.alias = f.alias
    parsed.identity = (str(f.path.resolve()), f.size, f.mtime_ns)
    f.close()
    return parsed
