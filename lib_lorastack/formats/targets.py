"""What a LoRA key lands on: model families, model parts and one target parameter.

Module names are the WebUI's checkpoint-style names (as in ``../shared/model-tables``), e.g.
``model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q`` or
``conditioner.embedders.1.model.transformer.resblocks.0.attn``. At run time the WebUI inserts
``.wrapped`` into text-encoder paths; resolving live modules is the engine's job, not the key map's.
Flux names are Forge's patcher names (``diffusion_model.double_blocks.0.img_attn.qkv``,
``clip_l.transformer.text_model.…``, ``t5xxl.transformer.encoder.block.0.…``), as in ``flux1.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Family(str, Enum):
    """Base-model family a LoRA is made for (or a model is)."""

    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    FLUX = "flux"  # Flux.1 dev/schnell as Forge builds it
    # Recognised so that we can say so, not supported yet.
    SD3 = "sd3"

    @property
    def supported(self) -> bool:
        return self in (Family.SD1, Family.SD2, Family.SDXL, Family.FLUX)


class Component(str, Enum):
    """Model part a target belongs to; TE strength applies to every text encoder."""

    UNET = "unet"  # also the Flux transformer (diffusion_model.…): strength unet=
    TE = "te"  # SD1 CLIP-L / SD2 OpenCLIP-H
    TE1 = "te1"  # SDXL CLIP-L  (conditioner.embedders.0)
    TE2 = "te2"  # SDXL OpenCLIP-bigG (conditioner.embedders.1)
    CLIP_L = "clip_l"  # Flux CLIP-L (clip_l.…)
    T5XXL = "t5xxl"  # Flux T5-XXL (t5xxl.…)

    @property
    def is_text_encoder(self) -> bool:
        return self is not Component.UNET


UNET_PREFIX = "model.diffusion_model."
FLUX_PREFIX = "diffusion_model."  # Forge's patcher root of the Flux transformer
CLIP_L_ROOT = "clip_l."
T5XXL_ROOT = "t5xxl."


def component_of(module: str) -> Component:
    """The model part of a checkpoint-style module name."""
    if module.startswith((UNET_PREFIX, FLUX_PREFIX)):
        return Component.UNET
    if module.startswith(CLIP_L_ROOT):
        return Component.CLIP_L
    if module.startswith(T5XXL_ROOT):
        return Component.T5XXL
    if module.startswith("conditioner.embedders.0."):
        return Component.TE1
    if module.startswith("conditioner.embedders.1."):
        return Component.TE2
    if module.startswith("cond_stage_model."):
        return Component.TE
    raise ValueError(f"not a UNet or text-encoder module name: {module!r}")


@dataclass(frozen=True, order=True)
class Target:
    """One parameter (or a row block of one) that a LoRA module changes.

    ``module``: checkpoint-style module name. ``param``: the weight parameter's name on that module
    (``weight``; ``in_proj_weight`` for OpenCLIP's fused attention). ``rows``: ``(start, stop)`` when the
    change covers only a row block of the parameter (q, k or v inside ``in_proj_weight``); ``None`` = whole.
    The matching bias, if an adapter changes it, is ``bias_param`` with the same rows.
    """

    module: str
    param: str = "weight"
    rows: tuple[int, int] | None = None

    @property
    def component(self) -> Component:
        return component_of(self.module)

    @property
    def bias_param(self) -> str:
        return "in_proj_bias" if self.param == "in_proj_weight" else "bias"

    def __str__(self) -> str:
        s = self.module if self.param == "weight" else f"{self.module}.{self.param}"
        return s if self.rows is None else f"{s}[{self.rows[0]}:{self.rows[1]}]"
