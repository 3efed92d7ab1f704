"""Forge's module names → ours (lib_lorastack/formats/forge_names.py), checked against the real tables of both hosts
(../shared/model-tables: forge-sd15/forge-sdxl from Forge dfdcbab6, sd15/sdxl from A1111 v1.10.1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib_lorastack.formats.forge_names import attention_widths, our_name, translate_target
from lib_lorastack.formats.targets import Family, Target
from lib_lorastack.formats.writers import targetable

TABLES = Path(__file__).resolve().parents[2] / "shared" / "model-tables"
pytestmark = pytest.mark.skipif(not (TABLES / "forge-sdxl.json").is_file(), reason="needs ../shared/model-tables")


def _table(name: str) -> dict[str, dict]:
    return {m["name"]: m["params"] for m in json.loads((TABLES / name).read_text())["modules"]}


class _Weight:
    def __init__(self, shape) -> None:
        self.shape = tuple(shape)


class _Module:
    def __init__(self, params: dict) -> None:
        for k, v in params.items():
            setattr(self, k, _Weight(v))


def _ours_from_forge(family: Family, forge_table: str) -> dict[str, _Module]:
    out = {}
    for name, params in _table(forge_table).items():
        if ".wrapped" in name:
            continue
        ours = our_name(family, name)
        if ours is not None:
            assert ours not in out, ours
            out[ours] = _Module(params)
    return out


def _shape(modules: dict, target: Target) -> tuple | None:
    module = modules.get(target.module)
    weight = getattr(module, target.param, None)
    if weight is None:
        return None
    if target.rows is None:
        return weight.shape
    return (target.rows[1] - target.rows[0], *weight.shape[1:])


@pytest.mark.parametrize(("family", "forge", "a1111"), [(Family.SD1, "forge-sd15.json", "sd15.json"), (Family.SDXL, "forge-sdxl.json", "sdxl.json")])
def test_every_target_of_ours_lands_on_a_forge_weight_of_the_same_shape(family: Family, forge: str, a1111: str) -> None:
    ours = _ours_from_forge(family, forge)
    a1111_modules = {n: _Module(p) for n, p in _table(a1111).items()}
    widths = attention_widths(ours)
    targets = [t for t in targetable(family, norms=True) if _shape(a1111_modules, t) is not None]
    assert len(targets) > 300
    missing = []
    for t in targets:
        forge_target = translate_target(t, widths)
        if _shape(ours, forge_target) != _shape(a1111_modules, t):
            missing.append((str(t), str(forge_target)))
    # the only A1111 weights Forge does not hold as a module of its own: none among the LoRA targets
    assert missing == []


def test_sdxl_clip_g_qkv_rows_become_the_split_linears() -> None:
    ours = _ours_from_forge(Family.SDXL, "forge-sdxl.json")
    widths = attention_widths(ours)
    attn = "conditioner.embedders.1.model.transformer.resblocks.3.attn"
    assert widths[attn] == 1280
    assert translate_target(Target(attn, "in_proj_weight", (0, 1280)), widths) == Target(attn + ".q_proj")
    assert translate_target(Target(attn, "in_proj_weight", (1280, 2560)), widths) == Target(attn + ".k_proj")
    assert translate_target(Target(attn, "in_proj_weight", (2560, 3840)), widths) == Target(attn + ".v_proj")
    whole = Target(attn, "in_proj_weight")  # not one of q, k or v: left for the engine to report as missing
    assert translate_target(whole, widths) == whole
    assert our_name(Family.SDXL, "clip_g.transformer.text_model.encoder.layers.3.mlp.fc1") == (
        "conditioner.embedders.1.model.transformer.resblocks.3.mlp.c_fc"
    )
    assert our_name(Family.SDXL, "clip_l.transformer.text_model.encoder.layers.3.mlp.fc1") == (
        "conditioner.embedders.0.transformer.text_model.encoder.layers.3.mlp.fc1"
    )
    assert our_name(Family.SD1, "clip_l.transformer.text_model.encoder.layers.3.mlp.fc1") == (
        "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1"
    )
    assert our_name(Family.SD1, "diffusion_model.out.2") == "model.diffusion_model.out.2"
    assert our_name(Family.SDXL, "clip_g.logit_scale") is None


def test_an_sdxl_lora_on_forges_split_clip_g_writes_what_it_writes_into_openclips_in_proj(tmp_path: Path) -> None:
    """The same session, the same LoRA: on A1111's OpenCLIP layout (in_proj row blocks) and on a Forge-layout copy
    of the same weights (separate q/k/v Linears, our names through ``our_name``, targets translated) the changed
    weights agree bit for bit, and both restore exactly."""
    import torch

    from lib_lorastack.engine.resolve import resolve_modules, resolve_renamed
    from lib_lorastack.host import ModelHandle
    from lib_lorastack.tools.skeleton import build_skeleton
    from tests.helpers.engine_fixtures import subset_targets
    from tests.helpers.host_fixtures import make_session, write_lora

    subset = ("embedders.1.model.transformer.resblocks.0.", "input_blocks.4.1.transformer_blocks.0.attn2.to_k")
    a1111 = build_skeleton(Family.SDXL, dtype=torch.float32, select=lambda n: any(s in n for s in subset), seed=3)
    block = dict(a1111.named_modules())["conditioner.embedders.1.model.transformer.resblocks.0"]
    forge = torch.nn.Module()  # clip_g in HF layout, holding copies of the same weights
    layer = torch.nn.Module()
    attn = torch.nn.Module()
    width = block.attn.in_proj_weight.shape[1]
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        lin = torch.nn.Linear(width, width)
        lin.weight.data.copy_(block.attn.in_proj_weight[i * width : (i + 1) * width])
        lin.bias.data.copy_(block.attn.in_proj_bias[i * width : (i + 1) * width])
        attn.add_module(name, lin)
    out = torch.nn.Linear(width, width)
    out.load_state_dict(block.attn.out_proj.state_dict())
    attn.add_module("out_proj", out)
    layer.add_module("self_attn", attn)
    enc = torch.nn.Module()
    enc.add_module("layers", torch.nn.ModuleList([layer]))
    text_model = torch.nn.Module()
    text_model.add_module("encoder", enc)
    transformer = torch.nn.Module()
    transformer.add_module("text_model", text_model)
    clip_g = torch.nn.Module()
    clip_g.add_module("transformer", transformer)
    forge.add_module("clip_g", clip_g)
    forge.requires_grad_(False)

    targets = [t for t in subset_targets(Family.SDXL, subset) if t.component.is_text_encoder and ".attn" in t.module]
    assert {t.param for t in targets} == {"in_proj_weight", "weight"}  # q, k, v rows and out_proj
    write_lora(tmp_path / "Lora", "te2", targets, seed=5, family=Family.SDXL)
    session, _ = make_session(tmp_path / "Lora")
    ours = resolve_renamed(forge, lambda n: our_name(Family.SDXL, n))
    widths = attention_widths(ours)
    handles = [
        ModelHandle(object(), Family.SDXL, resolve_modules(a1111), "a1111"),
        ModelHandle(object(), Family.SDXL, ours, "forge", translate=lambda t: translate_target(t, widths)),
    ]
    pristine = [block.attn.in_proj_weight.clone(), forge.clip_g.transformer.text_model.encoder.layers[0].self_attn.k_proj.weight.clone()]
    with torch.no_grad():
        for h, written in zip(handles, (2, 4)):  # in_proj_weight + out_proj; q, k, v + out_proj
            activation = session.activate(h, [["te2", "0.8"]])
            assert activation.report.layers_written == written and not activation.messages, activation.messages
    forge_attn = forge.clip_g.transformer.text_model.encoder.layers[0].self_attn
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(getattr(forge_attn, name).weight, block.attn.in_proj_weight[i * width : (i + 1) * width])
    assert torch.equal(forge_attn.out_proj.weight, block.attn.out_proj.weight)
    assert not torch.equal(block.attn.in_proj_weight, pristine[0])
    with torch.no_grad():
        session.clear()
    assert torch.equal(block.attn.in_proj_weight, pristine[0]) and torch.equal(forge_attn.k_proj.weight, pristine[1])


def test_sd2_openclip_h_targets_land_on_forges_23_layer_clip_h() -> None:
    """Forge's SD2 ``clip_h`` is a Hugging Face CLIPTextModel of 23 layers, width 1024, MLP 4096 (Forge's
    backend/huggingface/stabilityai/stable-diffusion-2-1/text_encoder/config.json: SD2 conditions on the penultimate
    layer, as kohya's sd-scripts builds it). Every OpenCLIP-H target of layers 0-22 (q/k/v row blocks, out_proj,
    c_fc, c_proj) lands on a Forge Linear of its shape, and our kohya key for it is the key Forge's built-in maps to
    that Linear (``lora_te_`` + the HF name); layer 23 has no Forge module (the engine reports such a target)."""
    from lib_lorastack.formats.writers import kohya_key

    forge: dict[str, dict] = {}
    for i in range(23):
        pre = f"clip_h.transformer.text_model.encoder.layers.{i}."
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            forge[f"{pre}self_attn.{p}"] = {"weight": (1024, 1024), "bias": (1024,)}
        forge[f"{pre}mlp.fc1"] = {"weight": (4096, 1024), "bias": (4096,)}
        forge[f"{pre}mlp.fc2"] = {"weight": (1024, 4096), "bias": (1024,)}
    ours = {our_name(Family.SD2, n): _Module(p) for n, p in forge.items()}
    assert None not in ours and len(ours) == len(forge)
    back = {our_name(Family.SD2, n): n for n in forge}
    a1111 = {n: _Module(p) for n, p in _table("sd21.json").items()}
    widths = attention_widths(ours)
    te = [t for t in targetable(Family.SD2) if t.module.startswith("cond_stage_model.")]
    assert len(te) == 24 * 6
    landed = 0
    for t in te:
        forge_target = translate_target(t, widths)
        if ".resblocks.23." in t.module:
            assert forge_target.module not in ours
            continue
        assert _shape(ours, forge_target) == _shape(a1111, t), (t, forge_target)
        hf = back[forge_target.module][len("clip_h.transformer.") :]
        assert kohya_key(t, Family.SD2) == "lora_te_" + hf.replace(".", "_")
        landed += 1
    assert landed == 23 * 6
