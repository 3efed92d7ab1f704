"""A Flux model in Forge (stand-in): the Forge adapter recognises it, hands the engine Forge's own names, and a
kohya and a diffusers Flux LoRA stacked through the session change exactly their layers (the delta computed from
the file's tensors) and come off bit for bit."""

from __future__ import annotations

import types
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lib_lorastack.formats.targets import Family
from lib_lorastack.host import ModelHandle, StackOptions, StackSession
from lib_lorastack.stack import LoraCatalog
from lorastack_webui.hosts.forge import Forge
from tests.helpers.engine_fixtures import same_bits
from tests.helpers.flux_loras import lora_dict

QKV = "diffusion_model.double_blocks.0.img_attn.qkv"
LINEAR1 = "diffusion_model.single_blocks.1.linear1"
PROJ = "diffusion_model.double_blocks.0.img_attn.proj"


class Flux:  # Forge's engine class is named ``Flux`` (backend/diffusion_engine/flux.py)
    pass


def tree(named: dict[str, nn.Module]) -> nn.Module:
    """A module tree with the given dotted names (as the patcher's root holds them)."""
    root = nn.Module()
    for name, layer in named.items():
        parent = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, layer)
    return root


def flux_model() -> Flux:
    """Two of Forge's Flux layers at their real widths (flux1.json: qkv [9216, 3072], linear1 [21504, 3072]) and one
    layer no LoRA touches."""
    g = torch.Generator().manual_seed(3)
    layers = {}
    for name, (out_f, in_f) in ((QKV, (9216, 3072)), (LINEAR1, (21504, 3072)), (PROJ, (3072, 3072))):
        layer = nn.Linear(in_f, out_f).requires_grad_(False)
        layer.weight.copy_(torch.randn(out_f, in_f, generator=g) * 0.02)
        layers[name] = layer
    model = Flux()
    unet = types.SimpleNamespace(model=tree(layers))
    clip = types.SimpleNamespace(cond_stage_model=nn.ModuleDict())
    model.forge_objects_original = types.SimpleNamespace(unet=unet, clip=clip)
    return model


def test_forge_flux_model_is_patched_by_our_engine(tmp_path: Path) -> None:
    model = flux_model()
    forge = Forge()
    assert forge.family_of(model) is Family.FLUX
    modules, translate = forge.modules(model, Family.FLUX)
    qkv, linear1 = modules[QKV], modules[LINEAR1]
    assert qkv is model.forge_objects_original.unet.model.get_submodule(QKV)

    folder = tmp_path / "Lora"
    folder.mkdir()
    kohya = lora_dict([("lora_unet_double_blocks_0_img_attn_qkv", tuple(qkv.weight.shape))], alpha=lambda i: 2.0, rank=4, seed=1)
    save_file(kohya, str(folder / "flux_kohya.safetensors"))
    width = linear1.weight.shape[1]
    parts = [(f"transformer.single_transformer_blocks.1.attn.to_{p}", (width, width)) for p in "qkv"]
    peft = lora_dict(parts, down_key="lora_A.weight", up_key="lora_B.weight", rank=4, seed=2)
    save_file(peft, str(folder / "flux_peft.safetensors"))

    base = {k: m.weight.detach().clone() for k, m in modules.items() if isinstance(getattr(m, "weight", None), torch.Tensor)}
    catalog = LoraCatalog(folder)
    session = StackSession(catalog=lambda: catalog, options=lambda: StackOptions(mode="fused"), short_hash=lambda e: "")
    handle = ModelHandle(object(), Family.FLUX, modules, "flux-dev", translate)
    act = session.activate(handle, [["flux_kohya", "0.8"], ["flux_peft", "0.5"]])
    assert not act.messages, act.messages

    down, up = kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"], kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"]
    expected = base[QKV] + 0.8 * (2.0 / 4) * (up @ down)
    assert torch.allclose(qkv.weight, expected, atol=1e-6, rtol=1e-5)
    rows = []
    for p in "qkv":
        a, b = peft[f"transformer.single_transformer_blocks.1.attn.to_{p}.lora_A.weight"], peft[f"transformer.single_transformer_blocks.1.attn.to_{p}.lora_B.weight"]
        rows.append(0.5 * (b @ a))
    expected1 = base[LINEAR1].clone()
    expected1[: 3 * width] += torch.cat(rows)
    assert torch.allclose(linear1.weight, expected1, atol=1e-6, rtol=1e-5)
    untouched = [k for k in base if k not in (QKV, LINEAR1)]
    assert untouched and all(torch.equal(modules[k].weight, base[k]) for k in untouched)

    session.activate(handle, [])
    assert same_bits({k: modules[k].weight for k in base}, base)
    session.release(handle.key)
