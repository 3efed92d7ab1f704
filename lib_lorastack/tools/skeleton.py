"""Models with the WebUI's exact module names, classes and shapes, built from the module tables with random
weights: for the demo, benchmarks and tests (no weights are ever downloaded).

Flux (Forge's names from ``flux1.json``: ``diffusion_model.double_blocks.N.…``, ``clip_l.…``, ``t5xxl.…``) is built
the same way; Forge's own ``Linear`` is not a ``torch.nn.Linear`` subclass, the skeleton uses ``nn.Linear`` of the
same shapes. ``flux_select`` keeps a reduced depth (a few double and single blocks at the real widths)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..formats.model_tables import ModuleInfo, load_table
from ..formats.targets import UNET_PREFIX, Family

_OPENCLIP_HEADS = {1024: 16, 1280: 20}


def _conv(name: str, shape: tuple[int, ...], bias: bool) -> nn.Conv2d:
    out_ch, in_ch, kh, kw = shape
    stride = 2 if name.endswith(".op") else 1
    return nn.Conv2d(in_ch, out_ch, (kh, kw), stride=stride, padding=kh // 2, bias=bias)


def make_module(info: ModuleInfo) -> nn.Module:
    """One layer as the WebUI has it (real torch.nn class, real shapes), uninitialised."""
    p = info.params
    if info.base == "Linear" or (info.type == "Linear" and "weight" in p):  # Forge's Linear: base Module
        out_f, in_f = p["weight"]
        if info.type == "NonDynamicallyQuantizableLinear":  # MultiheadAttention's out_proj
            return nn.modules.linear.NonDynamicallyQuantizableLinear(in_f, out_f, bias="bias" in p)
        return nn.Linear(in_f, out_f, bias="bias" in p)
    if info.base == "Conv2d":
        return _conv(info.name, p["weight"], "bias" in p)
    if info.base == "GroupNorm":
        return nn.GroupNorm(32, p["weight"][0], eps=1e-6 if info.name.startswith(UNET_PREFIX) else 1e-5)
    if info.base == "LayerNorm":
        return nn.LayerNorm(p["weight"][0], eps=1e-5)
    if info.base == "Embedding":
        return nn.Embedding(*p["weight"])
    if info.base == "MultiheadAttention":
        width = p["in_proj_weight"][1]
        return nn.MultiheadAttention(width, _OPENCLIP_HEADS.get(width, 8), batch_first=True)
    module = nn.Module()  # e.g. open_clip's CLIP root: loose parameters only
    for pname, shape in p.items():
        module.register_parameter(pname, nn.Parameter(torch.empty(shape), requires_grad=False))
    return module


def flux_select(
    double_blocks: int = 2, single_blocks: int = 2, *, top: bool = True, text_encoders: bool = False
) -> Callable[[str], bool]:
    """Which Flux modules a reduced-depth skeleton keeps: the first ``double_blocks`` double and ``single_blocks``
    single blocks, the top-level layers (img_in, txt_in, time/vector/guidance_in, final_layer) when ``top``, and
    CLIP-L and T5-XXL when ``text_encoders``."""

    def keep(name: str) -> bool:
        if name.startswith("diffusion_model.double_blocks."):
            return int(name.split(".")[2]) < double_blocks
        if name.startswith("diffusion_model.single_blocks."):
            return int(name.split(".")[2]) < single_blocks
        if name.startswith("diffusion_model."):
            return top
        return text_encoders and name.startswith(("clip_l.", "t5xxl."))

    return keep


def _attach(root: nn.Module, name: str, module: nn.Module) -> None:
    parent = root
    parts = name.split(".")
    for part in parts[:-1]:
        child = parent._modules.get(part)
        if child is None:
            child = nn.Module()
            parent.add_module(part, child)
        parent = child
    existing = parent._modules.get(parts[-1])
    if existing is not None:  # a container created earlier for children of this module: keep them
        for child_name, child in existing.named_children():
            module.add_module(child_name, child)
    parent.add_module(parts[-1], module)


def build_skeleton(
    family: Family | str,
    *,
    dtype: torch.dtype = torch.float16,
    device: str | torch.device = "cpu",
    select: Callable[[str], bool] | None = None,
    seed: int = 0,
    init: str = "random",
) -> nn.Module:
    """A model whose ``named_modules()`` are the WebUI's (``model.diffusion_model.…``, ``cond_stage_model.…`` /
    ``conditioner.embedders.N.…``), restricted to the modules ``select`` keeps. Weights: seeded noise scaled
    like a trained layer (``init="random"``) or left uninitialised (``"empty"``)."""
    table = load_table(Family(family))
    root = nn.Module()
    with torch.device("meta"):
        for name, info in table.modules.items():
            if select is None or select(name):
                _attach(root, name, make_module(info))
    root = root.to_empty(device=device).to(dtype)
    root.requires_grad_(False)
    if init == "random":
        _fill_random(root, seed, device)
    return root


_POOL = (1 << 22) + 7919  # drawn once; every parameter copies a different window of it (normal_ on 1e9 values is slow)


def _fill_random(root: nn.Module, seed: int, device: str | torch.device) -> None:
    g = torch.Generator(device="cpu").manual_seed(seed)
    pool = torch.randn(2 * _POOL, generator=g).to(device)
    offsets = torch.randint(0, _POOL, (len(list(root.parameters())),), generator=g).tolist()
    with torch.no_grad():
        for (pname, param), offset in zip(root.named_parameters(), offsets):
            flat = param.view(-1)
            for start in range(0, flat.numel(), _POOL):
                n = min(_POOL, flat.numel() - start)
                flat[start : start + n].copy_(pool[offset : offset + n])
            if pname.endswith("bias") or param.dim() < 2:
                flat.mul_(0.02)
                if not pname.endswith("bias"):
                    flat.add_(1.0)  # norm scales near 1
            else:
                flat.mul_(param[0].numel() ** -0.5)
