"""Online layers follow the input: a host that moves a layer to another device for its forward (Forge's GPU-weights
budget, async offload) gets the LoRA computed there, with the factors the layer was built with."""

from __future__ import annotations

import torch

import lib_lorastack.engine.online as online
from lib_lorastack.engine import PatchEngine, StackLayer
from lib_lorastack.formats.targets import Family
from tests.helpers.engine_fixtures import make_lora, small_model, subset_targets

F = Family.SD1


def _same_device_linear(real):
    """``F.linear`` with the device check a GPU does (meta tensors, standing in for the GPU here, skip it)."""

    def linear(x, weight, bias=None):
        for t in (weight, bias):
            if t is not None and t.device != x.device:
                raise RuntimeError(f"expected all tensors on {x.device}, got one on {t.device}")
        return real(x, weight, bias)

    return linear


def test_an_online_layer_computes_on_the_device_of_its_input(monkeypatch) -> None:
    _model, modules = small_model(F)
    lora = make_lora(F, subset_targets(F), name="l", seed=3, rank=4)
    engine = PatchEngine(modules, mode="online")
    engine.apply([StackLayer(lora, unet=0.8, te=0.8)])
    name = next(t.module for t in lora.modules if t.param == "weight" and modules[t.module].weight.dim() == 2)
    layer = modules[name]
    x = torch.randn(3, layer.weight.shape[1])
    want = layer(x)
    assert not torch.allclose(want, torch.nn.functional.linear(x, layer.weight, layer.bias))  # the LoRA is in

    monkeypatch.setattr(online.F, "linear", _same_device_linear(torch.nn.functional.linear))
    layer.to("meta")  # the host moved the layer for its forward; the factors stay where they were built
    moved = layer(x.to("meta"))
    assert moved.device.type == "meta" and moved.shape == want.shape
