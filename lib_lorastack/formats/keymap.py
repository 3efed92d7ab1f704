"""LoRA file keys → (module prefix, suffix) → the WebUI Target they change; key-format and family detection."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .flux_keys import XLABS, map_flux_prefix
from .flux_names import REAL_DIMS, FluxDims
from .names import diffusers_to_webui, name_maps, webui_to_diffusers
from .targets import Family, Target

# Formats, as reported to users.
KOHYA = "kohya"  # lora_unet_<diffusers names>, lora_te_…
KOHYA_LDM = "kohya-ldm"  # lora_unet_<LDM/sgm names> (kohya's SDXL files)
LYCORIS = "lycoris"  # lycoris_<…>
PEFT = "diffusers-peft"  # unet.<…>.lora_A.weight, text_encoder.<…>
DIFFUSERS_OLD = "diffusers-attn-procs"  # <…>.processor.to_q_lora.down.weight

__all__ = [
    "DIFFUSERS_OLD", "KOHYA", "KOHYA_LDM", "LYCORIS", "PEFT", "XLABS", "SplitKey", "diffusers_to_webui", "family_hint",
    "foreign_family", "map_prefix", "split_key", "webui_to_diffusers",
]  # fmt: skip

_KOHYA_ROOTS = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lycoris_", "oft_unet_", "lora_te3_", "lora_transformer_")
_SD_ROOTS = _KOHYA_ROOTS[:6]  # lora_te3_ (T5) and lora_transformer_ (OneTrainer) exist only for Flux

# Dotted (PEFT / diffusers) suffixes → the kohya suffix the adapters know.
_DOTTED_SUFFIXES = [
    (re.compile(r"\.lora_A(?:\.[\w-]+)?\.weight$"), "lora_down.weight"),
    (re.compile(r"\.lora_B(?:\.[\w-]+)?\.weight$"), "lora_up.weight"),
    (re.compile(r"\.lora_B(?:\.[\w-]+)?\.bias$"), "bias"),
    (re.compile(r"\.lora_magnitude_vector(?:\.[\w-]+)?(?:\.weight)?$"), "lora_magnitude_vector"),
    (re.compile(r"\.lora\.down\.weight$"), "lora_down.weight"),
    (re.compile(r"\.lora\.up\.weight$"), "lora_up.weight"),
    (re.compile(r"\.lora_down\.weight$"), "lora_down.weight"),
    (re.compile(r"\.lora_up\.weight$"), "lora_up.weight"),
    (re.compile(r"\.lora_mid\.weight$"), "lora_mid.weight"),
    (re.compile(r"\.alpha$"), "alpha"),
]
# diffusers' attention-processor files (before PEFT): <attn>.processor.to_q_lora.down.weight, and their
# text-encoder keys <linear>.lora_linear_layer.down.weight
_OLD_PROC_KEY = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_OLD_TE_KEY = re.compile(r"\.lora_linear_layer\.(down|up)\.weight$")
_OLD_PROC_NAMES = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
# XLabs' Flux files: double_blocks.0.processor.qkv_lora1.down.weight, single_blocks.0.processor.proj_lora.up.weight
_XLABS_KEY = re.compile(r"\.processor\.((?:qkv|proj)_lora\d?)\.(down|up)\.weight$")

FLUX_MARKERS = ("double_blocks", "single_blocks", "single_transformer_blocks", "txt_in", "img_in")
SD3_MARKERS = ("joint_blocks", "context_block", "x_block", "context_embedder")


@dataclass(frozen=True)
class SplitKey:
    key: str
    prefix: str  # the module part, in the file's own spelling
    suffix: str  # normalised to kohya spelling (lora_down.weight, alpha, hada_w1_a, …)
    format: str


def split_key(key: str) -> SplitKey | None:
    """Split a file key into module prefix and suffix, or None for keys that are not module tensors."""
    if key.startswith(_KOHYA_ROOTS):
        prefix, dot, suffix = key.partition(".")
        if not dot:
            return None
        fmt = LYCORIS if key.startswith("lycoris_") else KOHYA
        return SplitKey(key, prefix, suffix, fmt)
    body = key[len("base_model.model.") :] if key.startswith("base_model.model.") else key
    m = _OLD_PROC_KEY.search(body)
    if m:
        prefix = body[: m.start()] + "." + _OLD_PROC_NAMES[m.group(1)]
        return SplitKey(key, prefix, f"lora_{m.group(2)}.weight", DIFFUSERS_OLD)
    m = _XLABS_KEY.search(body)
    if m:
        return SplitKey(key, body[: m.end(1)], f"lora_{m.group(2)}.weight", XLABS)
    m = _OLD_TE_KEY.search(body)
    if m:
        return SplitKey(key, body[: m.start()], f"lora_{m.group(1)}.weight", DIFFUSERS_OLD)
    for pattern, suffix in _DOTTED_SUFFIXES:
        m = pattern.search(body)
        if m:
            return SplitKey(key, body[: m.start()], suffix, PEFT)
    return None


_SPELLING_CACHE: dict[Family, dict[str, dict[str, list[Target]]]] = {}


def _spellings_by_root(family: Family) -> dict[str, dict[str, list[Target]]]:
    if family in _SPELLING_CACHE:
        return _SPELLING_CACHE[family]
    maps = name_maps(family)
    unet: dict[str, list[Target]] = {}
    for rel, t in maps.ldm.items():
        unet.setdefault(rel.replace(".", "_"), []).append(t)
    for diff, t in maps.unet_diffusers.items():
        unet.setdefault(diff.replace(".", "_"), []).append(t)
    by_root: dict[str, dict[str, list[Target]]] = {"unet": unet, "ldm": {r.replace(".", "_"): [] for r in maps.ldm}}
    for component, names in maps.te_hf.items():
        d: dict[str, list[Target]] = {}
        for hf, t in names.items():
            d.setdefault(hf.replace(".", "_"), []).append(t)
            if hf.startswith("text_model."):  # transformers 5 drops the text_model level of CLIPTextModel
                d.setdefault(hf[len("text_model.") :].replace(".", "_"), []).append(t)
        # The WebUI's own (OpenCLIP) spelling, e.g. lora_te_model_transformer_resblocks_0_mlp_c_fc
        for rel, t in maps.te_native[component].items():
            if t.param == "weight":
                d.setdefault(rel.replace(".", "_"), []).append(t)
        by_root[component] = d
    _SPELLING_CACHE[family] = by_root
    return by_root


def _dedupe(targets: list[Target]) -> list[Target]:
    seen: list[Target] = []
    for t in targets:
        if t not in seen:
            seen.append(t)
    return seen


def map_prefix(prefix: str, fmt: str, family: Family, dims: FluxDims | None = None) -> tuple[list[Target], str]:
    """The targets a module prefix changes in ``family``, and the format it proved to be ("" when unmapped).

    Flux: ``flux_keys.map_flux_prefix`` (``dims`` = the model's widths for the row slices); its hits' remaps are
    the loader's business, so only use this for Flux where the targets alone matter.
    """
    family = Family(family)
    if family is Family.FLUX:
        hits, proved = map_flux_prefix(prefix, fmt, dims or REAL_DIMS)
        return [h.target for h in hits], proved
    if fmt == XLABS or (fmt in (KOHYA, LYCORIS) and not prefix.startswith(_SD_ROOTS)):
        return [], ""
    roots = _spellings_by_root(family)
    ldm_spellings = roots["ldm"]
    if fmt in (KOHYA, LYCORIS):
        if prefix.startswith(("lora_unet_", "lycoris_", "oft_unet_")):
            body = prefix.split("_", 2)[2] if not prefix.startswith("lycoris_") else prefix[len("lycoris_") :]
            hit = roots["unet"].get(body)
            if hit:
                ldm_style = body in ldm_spellings
                return _dedupe(hit), (KOHYA_LDM if ldm_style and fmt == KOHYA else fmt)
            return [], ""
        te_root = "lora_te1_" if prefix.startswith("lora_te1_") else "lora_te2_" if prefix.startswith("lora_te2_") else "lora_te_"
        body = prefix[len(te_root) :]
        if family is Family.SDXL:
            component = "text_encoder_2" if te_root == "lora_te2_" else "text_encoder"
        else:
            component = "text_encoder" if te_root != "lora_te2_" else ""
        hit = roots.get(component, {}).get(body)
        return (_dedupe(hit), fmt) if hit else ([], "")
    # dotted names
    component, rest = _dotted_component(prefix)
    if component == "unet":
        t = name_maps(family).unet_diffusers.get(rest)
        return ([t], fmt) if t else ([], "")
    hf = name_maps(family).te_hf.get(component, {})
    t = hf.get(rest) or (hf.get("text_model." + rest) if not rest.startswith("text_model.") else None)
    return ([t], fmt) if t else ([], "")


def _dotted_component(prefix: str) -> tuple[str, str]:
    for lead in ("unet.", "text_encoder_2.", "text_encoder."):
        if prefix.startswith(lead):
            return lead[:-1], prefix[len(lead) :]
    return "unet", prefix  # a bare PEFT UNet state dict


def foreign_family(keys: Iterable[str], metadata: dict[str, str]) -> Family | None:
    """Flux or SD3 when the keys or metadata say so (not one of the SD UNet families; SD3 is not supported)."""
    arch = (metadata.get("modelspec.architecture", "") + " " + metadata.get("ss_base_model_version", "")).lower()
    if "flux" in arch:
        return Family.FLUX
    if "stable-diffusion-v3" in arch or "sd3" in arch:
        return Family.SD3
    keys = list(keys)
    if any(m in k for k in keys for m in FLUX_MARKERS):
        return Family.FLUX
    if any(m in k for k in keys for m in SD3_MARKERS):
        return Family.SD3
    return None


def family_hint(metadata: dict[str, str]) -> Family | None:
    """What the training metadata says the base model is, if anything."""
    arch = metadata.get("modelspec.architecture", "").lower()
    base = metadata.get("ss_base_model_version", "").lower()
    text = arch + " " + base
    if "flux" in text:
        return Family.FLUX
    if "xl" in text:
        return Family.SDXL
    if "v2" in text or metadata.get("ss_v2", "").lower() == "true":
        return Family.SD2
    if "v1" in text:
        return Family.SD1
    return None
