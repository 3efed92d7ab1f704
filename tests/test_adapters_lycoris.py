"""Our adapter math against lycoris-lora's own modules (the reference implementation of LyCORIS)."""

from __future__ import annotations

import pytest
import torch
from lycoris.modules.boft import ButterflyOFTModule
from lycoris.modules.diag_oft import DiagOFTModule
from lycoris.modules.full import FullModule
from lycoris.modules.glora import GLoRAModule
from lycoris.modules.ia3 import IA3Module
from lycoris.modules.locon import LoConModule
from lycoris.modules.loha import LohaModule
from lycoris.modules.lokr import LokrModule
from lycoris.modules.norms import NormModule
from torch import nn

from lib_lorastack.adapters import build_adapter

TOL = 1e-6


def _layer(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Linear(32, 48)
    if kind == "conv3":
        return nn.Conv2d(16, 32, 3, padding=1)
    if kind == "conv1":
        return nn.Conv2d(16, 32, 1)
    if kind == "groupnorm":
        return nn.GroupNorm(4, 32)
    return nn.LayerNorm(32)


def _randomize(module: nn.Module, seed: int) -> None:
    """lycoris zero-initialises one factor; fill every parameter so every tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "org" in name:
                continue
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if hasattr(module, "dora_scale") and isinstance(module.dora_scale, torch.Tensor):
            module.dora_scale.add_(1.0)


def _probe_weight(layer: nn.Module, shape: torch.Size) -> torch.Tensor:
    """The weight a layer's forward really uses, read back by feeding one-hot inputs (exact: each output is one
    product by 1.0 plus zeros), minus the bias."""
    with torch.no_grad():
        if len(shape) == 2:
            eye = torch.eye(shape[1])
            return (layer(eye) - layer(torch.zeros(1, shape[1]))).t()
        out_ch, in_ch, kh, kw = shape
        hot = torch.eye(in_ch * kh * kw).reshape(-1, in_ch, kh, kw)
        y = layer(hot) - layer(torch.zeros(1, in_ch, kh, kw))
        return y[:, :, kh // 2, kw // 2].reshape(in_ch, kh, kw, out_ch).permute(3, 0, 1, 2)


def _oracle_weight(lyco, layer: nn.Module, base: torch.Tensor) -> torch.Tensor:
    # lycoris 4.1.3 applies alpha/rank twice when it *merges* LoHa and LoKr (diffusers-oracle.md §6);
    # its online forward is right, so those two are read back from the forward.
    if isinstance(lyco, LohaModule | LokrModule):
        lyco.apply_to()
        return _probe_weight(layer, base.shape)
    return lyco.get_merged_weight(multiplier=1.0)[0].detach().reshape(base.shape)


def _check(lyco, layer: nn.Module) -> float:
    base = layer.weight.detach().clone()
    merged = _oracle_weight(lyco, layer, base)
    if isinstance(lyco, FullModule):  # in diff mode its `weight` *is* ΔW; its custom_state_dict forgets that
        sd = {"diff": lyco.weight, "diff_b": lyco.bias}
    else:
        sd = lyco.custom_state_dict() or {k: v for k, v in lyco.state_dict().items() if k in type(lyco).weight_list}
    sd = {k: v.detach().clone() for k, v in sd.items()}
    if isinstance(lyco, FullModule):
        assert lyco.is_diff
    adapter = build_adapter(sd)
    assert adapter.validate(base.shape) is None
    ours = base + adapter.update(base).weight
    change = (merged - base).abs().max()
    assert change > 1e-4, "the oracle's change is trivial: the test would prove nothing"
    err = float((ours - merged).abs().max() / merged.abs().max())
    assert err <= TOL, f"{type(adapter).__name__}: max relative error {err:.2e}"
    # the engine's in-place form (strength folded into a factor, one pass over the weight)
    written = base.clone()
    adapter.add_to(written, torch.tensor([0.6]))
    err_in_place = float((written - (base + 0.6 * (merged - base))).abs().max() / merged.abs().max())
    assert err_in_place <= TOL, f"{type(adapter).__name__}.add_to: max relative error {err_in_place:.2e}"
    return err


CASES = [
    ("locon", "linear", dict(lora_dim=4, alpha=2)),
    ("locon", "conv3", dict(lora_dim=4, alpha=8)),
    ("locon", "conv1", dict(lora_dim=4, alpha=1)),
    ("locon", "conv3", dict(lora_dim=4, alpha=2, use_tucker=True)),
    ("locon", "linear", dict(lora_dim=4, alpha=2, weight_decompose=True)),
    ("locon", "conv3", dict(lora_dim=4, alpha=2, weight_decompose=True)),
    ("locon", "linear", dict(lora_dim=4, alpha=2, weight_decompose=True, wd_on_out=False)),
    ("loha", "linear", dict(lora_dim=4, alpha=2)),
    ("loha", "conv3", dict(lora_dim=4, alpha=3)),
    ("loha", "conv3", dict(lora_dim=4, alpha=2, use_tucker=True)),
    ("loha", "linear", dict(lora_dim=4, alpha=2, weight_decompose=True)),
    ("lokr", "linear", dict(lora_dim=4, alpha=2, factor=4)),
    ("lokr", "linear", dict(lora_dim=4, alpha=2, factor=-1)),
    ("lokr", "linear", dict(lora_dim=64, alpha=2, factor=4)),  # rank ≥ half the dims: w2 full
    ("lokr", "linear", dict(lora_dim=4, alpha=2, factor=4, decompose_both=True)),
    ("lokr", "linear", dict(lora_dim=4, alpha=2, factor=4, full_matrix=True)),  # both full: scale 1
    ("lokr", "conv3", dict(lora_dim=4, alpha=2, factor=4)),
    ("lokr", "conv3", dict(lora_dim=4, alpha=2, factor=4, use_tucker=True)),
    ("lokr", "linear", dict(lora_dim=4, alpha=2, factor=4, weight_decompose=True)),
    ("full", "linear", {}),
    ("full", "conv3", {}),
    ("ia3", "linear", {}),
    ("glora", "linear", dict(lora_dim=4, alpha=2)),
    ("glora", "conv3", dict(lora_dim=4, alpha=2)),
    ("oft", "linear", dict(lora_dim=8, alpha=0)),
    ("oft", "linear", dict(lora_dim=8, alpha=1e-3)),  # constraint active
    ("oft", "conv3", dict(lora_dim=8, alpha=0, rescaled=True)),
    ("boft", "linear", dict(lora_dim=8, alpha=0)),
    ("boft", "conv3", dict(lora_dim=8, alpha=0, rescaled=True)),
    ("norm", "groupnorm", {}),
    ("norm", "layernorm", {}),
]

MODULES = {
    "locon": LoConModule,
    "loha": LohaModule,
    "lokr": LokrModule,
    "full": FullModule,
    "ia3": IA3Module,
    "glora": GLoRAModule,
    "oft": DiagOFTModule,
    "boft": ButterflyOFTModule,
    "norm": NormModule,
}


@pytest.mark.parametrize(("algo", "kind", "kwargs"), CASES, ids=[f"{a}-{k}-{i}" for i, (a, k, _) in enumerate(CASES)])
def test_matches_lycoris_merged_weight(algo: str, kind: str, kwargs: dict) -> None:
    layer = _layer(kind)
    if algo == "oft" and "alpha" in kwargs:
        kwargs = {**kwargs, "constraint": kwargs.pop("alpha")}
    if algo == "boft" and "alpha" in kwargs:
        kwargs = {**kwargs, "constraint": kwargs.pop("alpha")}
    lyco = MODULES[algo]("lora_test", layer, multiplier=1.0, **kwargs)
    _randomize(lyco, seed=len(kwargs) + len(kind))
    _check(lyco, layer)
