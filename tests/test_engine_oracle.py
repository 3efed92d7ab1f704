"""The engine against diffusers + PEFT: a tiny SD1 UNet and CLIP with two kohya LoRAs stacked by
``set_adapters`` give the same outputs as our fused and our online patching; per-block weights too."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from lib_lorastack.engine import PatchEngine, StackLayer
from lib_lorastack.formats.loader import parse_state_dict
from lib_lorastack.formats.names import diffusers_to_webui
from lib_lorastack.formats.targets import Family
from lib_lorastack.syntax.blocks import block_id
from lib_lorastack.syntax.lbw import resolve_block_weights
from tests.helpers.engine_fixtures import same_bits, snapshot
from tests.helpers.tiny_models import shape_of_tiny, tiny_clip, tiny_sd1_unet, webui_modules

F = Family.SD1
UNET_KINDS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
              "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")  # fmt: skip
TE_KINDS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def kohya_file(unet, te, *, rank: int, alpha: float, seed: int, every: int = 1, attention_only: bool = False):
    """A kohya LoRA for the tiny models (diffusers-style kohya names), uniform alpha (diffusers mishandles mixed)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    kinds = UNET_KINDS[:8] if attention_only else UNET_KINDS
    picked = [(n, m) for n, m in unet.named_modules() if n.endswith(kinds) and hasattr(m, "weight")][::every]
    items = [("lora_unet_" + n.replace(".", "_"), m) for n, m in picked]
    items += [("lora_te_text_model_" + n.replace(".", "_"), m) for n, m in te.named_modules() if n.endswith(TE_KINDS)]
    for key, m in items:
        w = m.weight
        if w.dim() == 4:
            down = torch.randn(rank, w.shape[1], *w.shape[2:], generator=g) * 0.3
            up = torch.randn(w.shape[0], rank, 1, 1, generator=g) * 0.3
        else:
            down, up = torch.randn(rank, w.shape[1], generator=g) * 0.3, torch.randn(w.shape[0], rank, generator=g) * 0.3
        sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
        sd[f"{key}.alpha"] = torch.tensor(alpha)
    return sd


def run(unet, te):
    g = torch.Generator().manual_seed(5)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    ids = torch.randint(3, 1000, (2, 77), generator=g)
    with torch.no_grad():
        ctx = te(ids)[0]
        return unet(sample, 10, encoder_hidden_states=ctx).sample, ctx


def diffusers_reference(files, weights, per_module=None):
    unet, te = tiny_sd1_unet(0), tiny_clip(0)
    pipe = StableDiffusionPipeline(
        vae=None, text_encoder=te, tokenizer=None, unet=unet, scheduler=DDIMScheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    names = []
    for i, sd in enumerate(files):
        pipe.load_lora_weights({k: v.clone() for k, v in sd.items()}, adapter_name=f"a{i}")
        names.append(f"a{i}")
    pipe.set_adapters(names, weights)
    if per_module is not None:  # per-block scales through PEFT's own per-layer API
        for n, m in pipe.unet.named_modules():
            if hasattr(m, "set_scale") and hasattr(m, "scaling"):
                for i, name in enumerate(names):
                    if name in m.scaling:
                        m.set_scale(name, weights[i] * per_module[i](n))
    return run(pipe.unet, pipe.text_encoder)


def ours(files, strengths, mode, block_weights=None):
    unet, te = tiny_sd1_unet(0), tiny_clip(0)
    modules = webui_modules(F, unet, te)
    base = snapshot(unet) | {f"te.{k}": v for k, v in snapshot(te).items()}
    engine = PatchEngine(modules, mode=mode)
    stack = []
    for i, (sd, s) in enumerate(zip(files, strengths)):
        lora = parse_state_dict(sd, family=F, name=f"l{i}", shape_of=shape_of_tiny(modules))
        assert not lora.unmatched, lora.unmatched[:3]
        bw = block_weights[i] if block_weights else None
        stack.append(StackLayer(lora, te=s, unet=s, block_weight=bw))
    report = engine.apply(stack)
    assert not report.skipped
    out = run(unet, te)
    engine.clear()
    assert same_bits(snapshot(unet) | {f"te.{k}": v for k, v in snapshot(te).items()}, base)
    return out


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def files():
    unet, te = tiny_sd1_unet(0), tiny_clip(0)
    return [kohya_file(unet, te, rank=4, alpha=2.0, seed=1), kohya_file(unet, te, rank=8, alpha=8.0, seed=2, every=2)]


@pytest.mark.parametrize("mode", ["fused", "online"])
def test_stack_equals_diffusers_set_adapters(files, mode: str) -> None:
    y_ref, ctx_ref = diffusers_reference(files, [0.7, 0.4])
    base, _ = run(tiny_sd1_unet(0), tiny_clip(0))
    assert close(base, y_ref) > 1e-2, "the LoRAs must change the output"
    y, ctx = ours(files, [0.7, 0.4], mode)
    assert close(ctx, ctx_ref) <= 1e-5
    assert close(y, y_ref) <= 1e-5


@pytest.mark.parametrize("mode", ["fused", "online"])
def test_block_weights_equal_peft_per_layer_scales(mode: str) -> None:
    unet, te = tiny_sd1_unet(0), tiny_clip(0)
    files = [kohya_file(unet, te, rank=4, alpha=4.0, seed=3, attention_only=True)]
    bw = resolve_block_weights(F, "1,0,0.5,1,0,1,0.25,2,1,0,1,0.5,1,1,0.5,0,1")  # 17 values, LBW layout
    per_module = [lambda n: bw.weight_for(diffusers_to_webui("unet." + n, F).module)]
    assert {block_id(diffusers_to_webui("unet." + n, F).module) for n, _ in unet.named_modules() if n.endswith("to_q")} == {
        "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", *[f"OUT{i:02d}" for i in range(3, 12)]}  # fmt: skip
    y_ref, _ = diffusers_reference(files, [0.9], per_module)
    y, _ = ours(files, [0.9], mode, [bw.weight_for])
    y_flat, _ = ours(files, [0.9], mode)
    assert close(y_flat, y_ref) > 1e-3, "block weights must matter"
    assert close(y, y_ref) <= 1e-5
