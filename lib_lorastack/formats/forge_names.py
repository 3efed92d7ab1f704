"""Forge's module names in our checkpoint-style namespace, host-free.

Forge (lllyasviel's and Forge Neo) builds SD models as two patcher roots: the UNet's ``KModel``
(``diffusion_model.…``) and the text encoders' ``JointTextEncoder`` (``clip_l.…``, ``clip_g.…``, ``clip_h.…``),
every text encoder in Hugging Face CLIP layout (see ``../shared/model-tables/README.md``, Forge part). Our targets
are the A1111 checkpoint names (``targets.py``), where SD2's OpenCLIP-H and SDXL's OpenCLIP-bigG keep q, k and v
as row blocks of one ``attn.in_proj_weight``. Forge has separate ``q_proj``/``k_proj``/``v_proj`` Linears there, so
such a target becomes a whole-weight target on a name of ours that stands for the Forge Linear
(``….resblocks.N.attn.q_proj``), see ``translate_target``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .targets import Family, Target

UNET_ROOT = "diffusion_model."
_HF_LAYERS = "transformer.text_model.encoder.layers."

# text-encoder root in Forge → (our prefix, layout): "hf" keeps the names, "openclip" renames them
_TEXT_ENCODERS: dict[Family, dict[str, tuple[str, str]]] = {
    Family.SD1: {"clip_l.": ("cond_stage_model.", "hf")},
    Family.SD2: {"clip_h.": ("cond_stage_model.model.", "openclip")},
    Family.SDXL: {"clip_l.": ("conditioner.embedders.0.", "hf"), "clip_g.": ("conditioner.embedders.1.model.", "openclip")},
}

# HF CLIP text model (below ``transformer.text_model.``) → OpenCLIP (below the ``model.`` of the embedder)
_OPENCLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_OPENCLIP_TOP = {
    "transformer.text_model.embeddings.token_embedding": "token_embedding",
    "transformer.text_model.final_layer_norm": "ln_final",
}
_QKV = ("q_proj", "k_proj", "v_proj")
_LAYER = re.compile(r"(\d+)\.(.+)")


def our_name(family: Family, forge_name: str) -> str | None:
    """The checkpoint-style name of a Forge module (a patch-key module name), or None when we have no target
    there (``clip_g.logit_scale``'s root, the position embedding, a wrapper's inner module)."""
    if forge_name.startswith(UNET_ROOT):
        return "model." + forge_name
    for root, (prefix, layout) in _TEXT_ENCODERS.get(family, {}).items():
        if not forge_name.startswith(root):
            continue
        rest = forge_name[len(root) :]
        if layout == "hf":
            return prefix + rest if rest else None
        return _openclip(prefix, rest)
    return None


def _openclip(prefix: str, rest: str) -> str | None:
    if rest in _OPENCLIP_TOP:
        return prefix + _OPENCLIP_TOP[rest]
    if not rest.startswith(_HF_LAYERS):
        return None
    m = _LAYER.fullmatch(rest[len(_HF_LAYERS) :])
    if m is None or m.group(2) not in _OPENCLIP_LAYER:
        return None
    return f"{prefix}transformer.resblocks.{m.group(1)}.{_OPENCLIP_LAYER[m.group(2)]}"


def translate_target(target: Target, widths: Mapping[str, int]) -> Target:
    """A target on OpenCLIP's fused ``in_proj_weight`` row block → the whole weight of the Forge q/k/v Linear that
    holds those rows; every other target unchanged. ``widths``: the attention width by our ``….attn`` module name
    (a block that is not exactly one of q, k or v is left as it is: the model lacks it, and the engine says so)."""
    if target.param != "in_proj_weight" or target.rows is None:
        return target
    width = widths.get(target.module)
    start, stop = target.rows
    if not width or stop - start != width or start % width or not 0 <= start // width < 3:
        return target
    return Target(f"{target.module}.{_QKV[start // width]}", "weight")


def attention_widths(modules: Mapping[str, object]) -> dict[str, int]:
    """Our ``….attn`` name → width, for every translated q_proj in ``modules`` (its weight's row count)."""
    out: dict[str, int] = {}
    for name, module in modules.items():
        if name.endswith(".attn.q_proj"):
            weight = getattr(module, "weight", None)
            shape = getattr(weight, "shape", None)
            if shape:
                out[name[: -len(".q_proj")]] = int(shape[0])
    return out
