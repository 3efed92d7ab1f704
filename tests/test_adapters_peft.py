"""LoRA and DoRA math against PEFT: files saved the way diffusers saves PEFT adapters, read by our loader, give
per layer exactly the weight PEFT merges."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

from lib_lorastack.formats.loader import parse_state_dict
from lib_lorastack.formats.targets import Family
from tests.helpers.tiny_models import diffusers_name, shape_of_tiny, tiny_clip, tiny_sd1_unet, webui_modules

F = Family.SD1
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
                "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv"]  # fmt: skip
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def peft_file(model: torch.nn.Module, component: str, targets: list[str], *, use_dora: bool, seed: int):
    """Inject a PEFT LoRA (noise in A, B and the DoRA magnitude so nothing is trivial), return the
    diffusers-style state dict + metadata, and the weights PEFT merges."""
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, use_dora=use_dora,
        rank_pattern={"to_k": 2, "conv1": 3}, alpha_pattern={"to_v": 3, "ff.net.2": 16},
    )  # fmt: skip
    peft_model = inject_adapter_in_model(config, copy.deepcopy(model))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (p.abs() if "magnitude" in name else 0))
    sd = {f"{component}.{k}": v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    meta = {f"{component}.{k}": v for k, v in config.to_dict().items() if k in ("r", "lora_alpha", "use_dora")}
    meta[f"{component}.rank_pattern"] = config.rank_pattern
    meta[f"{component}.alpha_pattern"] = config.alpha_pattern
    merged = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "merge") and hasattr(module, "base_layer"):
            module.merge()
            merged[name] = module.base_layer.weight.detach().clone()
    return sd, meta, merged


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_every_layer_equals_peft_merge(use_dora: bool) -> None:
    unet, te = tiny_sd1_unet(0), tiny_clip(0)
    modules = webui_modules(F, unet, te)
    sd_u, meta_u, merged_u = peft_file(unet, "unet", UNET_TARGETS, use_dora=use_dora, seed=1)
    sd_t, meta_t, merged_t = peft_file(te, "text_encoder", TE_TARGETS, use_dora=use_dora, seed=2)
    metadata = {"lora_adapter_metadata": json.dumps({**meta_u, **meta_t}, default=list)}
    parsed = parse_state_dict({**sd_u, **sd_t}, family=F, metadata=metadata, shape_of=shape_of_tiny(modules))
    assert not parsed.unmatched and not parsed.problems
    assert len(parsed.modules) == len(merged_u) + len(merged_t) > 100
    worst = 0.0
    for target, adapter in parsed.modules.items():
        component, _, name = diffusers_name(target, F).partition(".")
        merged = merged_u if component == "unet" else merged_t
        name = name if name in merged else name.removeprefix("text_model.")
        base = modules[target.module].weight.detach()
        ours = base + adapter.update(base).weight
        assert (merged[name] - base).abs().max() > 1e-3
        worst = max(worst, float((ours - merged[name]).abs().max() / merged[name].abs().max()))
    assert worst <= 1e-6, worst


def test_peft_lora_converted_to_kohya_by_diffusers() -> None:
    """The same PEFT LoRA through diffusers' own PEFT → kohya converter (which writes alpha = rank)."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    unet, te = tiny_sd1_unet(0), tiny_clip(0)
    modules = webui_modules(F, unet, te)
    merged_all = {}
    peft_sd = {}
    for model, component, targets, seed in ((unet, "unet", UNET_TARGETS, 3), (te, "text_encoder", TE_TARGETS, 4)):
        config = LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False)
        peft_model = inject_adapter_in_model(config, copy.deepcopy(model))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        peft_sd |= {f"{component}.{k}": v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
        for name, module in peft_model.named_modules():
            if hasattr(module, "merge") and hasattr(module, "base_layer"):
                module.merge()
                merged_all[f"{component}.{name}"] = module.base_layer.weight.detach().clone()
    kohya = convert_state_dict_to_kohya(peft_sd)
    assert all(k.startswith(("lora_unet_", "lora_te1_")) for k in kohya)
    parsed = parse_state_dict(kohya, family=F, shape_of=shape_of_tiny(modules))
    assert not parsed.unmatched and len(parsed.modules) == len(merged_all)
    for target, adapter in parsed.modules.items():
        name = diffusers_name(target, F)
        name = name if name in merged_all else name.replace("text_model.", "")
        base = modules[target.module].weight.detach()
        ours = base + adapter.update(base).weight
        assert float((ours - merged_all[name]).abs().max() / merged_all[name].abs().max()) <= 1e-6
