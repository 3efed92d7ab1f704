"""WebUI (LDM/sgm, checkpoint-style) module names ↔ diffusers / Hugging Face module names.

The WebUI names its UNet after the original LDM code (``input_blocks.4.1.transformer_blocks.0.attn1.to_q``);
diffusers, PEFT and kohya's SD1/SD2 files use diffusers' names (``down_blocks.1.attentions.0.…``). Text
encoders: HF CLIP keeps its names inside ``transformer.``; OpenCLIP (SD2, SDXL's second encoder) has its own
(``resblocks.N.attn`` with fused q/k/v), while files use HF names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from .model_tables import load_table
from .targets import UNET_PREFIX, Family, Target

_RESNET_LDM_TO_DIFFUSERS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_FIXED_LDM_TO_DIFFUSERS = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}
_OPENCLIP_TO_HF = {
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
}
_QKV = ("q_proj", "k_proj", "v_proj")

TE_ROOTS = {
    # family → [(WebUI root of the encoder, kind, diffusers component)]
    Family.SD1: [("cond_stage_model.", "hf", "text_encoder")],
    Family.SD2: [("cond_stage_model.", "openclip", "text_encoder")],
    Family.SDXL: [
        ("conditioner.embedders.0.", "hf", "text_encoder"),
        ("conditioner.embedders.1.", "openclip", "text_encoder_2"),
    ],
}


def unet_ldm_to_diffusers(name: str) -> str | None:
    """``input_blocks.4.1.proj_in`` → ``down_blocks.1.attentions.0.proj_in`` (names without ``model.diffusion_model.``)."""
    if name in _FIXED_LDM_TO_DIFFUSERS:
        return _FIXED_LDM_TO_DIFFUSERS[name]
    m = re.fullmatch(r"(input_blocks|output_blocks)\.(\d+)\.(\d+)(?:\.(.*))?", name)
    if m:
        kind, n, part, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        if kind == "input_blocks":
            block, j = divmod(n - 1, 3)
            if j == 2:
                return f"down_blocks.{block}.downsamplers.0.conv" if (part, rest) == (0, "op") else None
            prefix = f"down_blocks.{block}"
        else:
            block, j = divmod(n, 3)
            if part > 0 and rest == "conv":
                return f"up_blocks.{block}.upsamplers.0.conv"
            prefix = f"up_blocks.{block}"
        if part == 0:
            return _resnet(f"{prefix}.resnets.{j}", rest)
        return f"{prefix}.attentions.{j}.{rest}" if part == 1 and rest else None
    m = re.fullmatch(r"middle_block\.(\d)(?:\.(.*))?", name)
    if m:
        part, rest = int(m.group(1)), m.group(2)
        if part == 1:
            return f"mid_block.attentions.0.{rest}" if rest else None
        return _resnet(f"mid_block.resnets.{part // 2}", rest)
    return None


def _resnet(prefix: str, rest: str | None) -> str | None:
    if rest in _RESNET_LDM_TO_DIFFUSERS:
        return f"{prefix}.{_RESNET_LDM_TO_DIFFUSERS[rest]}"
    return None


def te_webui_to_hf(rel: str, kind: str) -> list[tuple[str, tuple[int, int] | None]]:
    """A text-encoder module (relative to its root) → its HF name(s), with the row block for fused q/k/v.

    ``rel`` is e.g. ``transformer.text_model.encoder.layers.0.mlp.fc1`` (HF CLIP) or
    ``model.transformer.resblocks.0.attn`` (OpenCLIP; gives three q/k/v names with slices filled in later).
    """
    if kind == "hf":
        return [(rel[len("transformer.") :], None)] if rel.startswith("transformer.") else []
    if rel == "model.ln_final":
        return [("text_model.final_layer_norm", None)]
    if rel == "model.token_embedding":
        return [("text_model.embeddings.token_embedding", None)]
    m = re.fullmatch(r"model\.transformer\.resblocks\.(\d+)\.(.*)", rel)
    if not m:
        return []
    layer, rest = m.group(1), m.group(2)
    base = f"text_model.encoder.layers.{layer}"
    if rest == "attn":
        return [(f"{base}.self_attn.{p}", (i, i + 1)) for i, p in enumerate(_QKV)]  # rows in units of width
    if rest in _OPENCLIP_TO_HF:
        return [(f"{base}.{_OPENCLIP_TO_HF[rest]}", None)]
    return []


@dataclass(frozen=True)
class NameMaps:
    """Every spelling a file may use for a module of one family, → the Target it means."""

    family: Family
    ldm: dict[str, Target]  # "diffusion_model.input_blocks.1.1.proj_in" style (UNet, without "model.")
    unet_diffusers: dict[str, Target]  # "down_blocks.0.attentions.0.proj_in"
    te_hf: dict[str, dict[str, Target]]  # component ("text_encoder", "text_encoder_2") → HF name → Target
    te_native: dict[str, dict[str, Target]]  # component → WebUI-relative TE name (OpenCLIP/HF as the WebUI has it)
    webui_to_diffusers: dict[str, str]  # WebUI module name (+ "#q" etc. for slices) → diffusers/HF name


@cache
def name_maps(family: Family) -> NameMaps:
    family = Family(family)
    table = load_table(family)
    ldm: dict[str, Target] = {}
    unet_diff: dict[str, Target] = {}
    te_hf: dict[str, dict[str, Target]] = {}
    te_native: dict[str, dict[str, Target]] = {}
    to_diff: dict[str, str] = {}
    for name, info in table.modules.items():
        if name.startswith(UNET_PREFIX):
            rel = name[len(UNET_PREFIX) :]
            target = Target(name)
            ldm[rel] = target
            diff = unet_ldm_to_diffusers(rel)
            if diff is not None:
                unet_diff[diff] = target
                to_diff[name] = f"unet.{diff}"
            continue
        for root, kind, component in TE_ROOTS.get(family, []):
            if not name.startswith(root):
                continue
            rel = name[len(root) :]
            te_native.setdefault(component, {})[rel] = Target(name)
            for hf, rows in te_webui_to_hf(rel, kind):
                if rows is None:
                    target = Target(name)
                    to_diff[name] = f"{component}.{hf}"
                else:
                    width = info.params["in_proj_weight"][1]
                    target = Target(name, "in_proj_weight", (rows[0] * width, rows[1] * width))
                    to_diff[str(target)] = f"{component}.{hf}"
                te_hf.setdefault(component, {})[hf] = target
    return NameMaps(family, ldm, unet_diff, te_hf, te_native, to_diff)


def diffusers_to_webui(name: str, family: Family) -> Target | None:
    """``unet.down_blocks.0.attentions.0.proj_in`` / ``text_encoder.text_model.…`` → the WebUI Target."""
    maps = name_maps(family)
    component, _, rest = name.partition(".")
    if component == "unet":
        return maps.unet_diffusers.get(rest)
    return maps.te_hf.get(component, {}).get(rest)


def webui_to_diffusers(target: Target | str, family: Family) -> str | None:
    """The inverse: a WebUI Target (or module name) → ``unet.…`` / ``text_encoder(_2).…`` (q/k/v for slices)."""
    return name_maps(family).webui_to_diffusers.get(str(target))
