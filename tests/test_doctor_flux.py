"""Doctor, bake and merge on a Flux stack: a kohya LoRA on the fused weights and a diffusers/PEFT LoRA on their q/k/v
(and MLP) parts. The baked file is kohya's Flux layout (one lora_down/lora_up pair per fused weight) and gives the
stack's deltas through diffusers' kohya Flux reader (``FluxPipeline.lora_state_dict``, the oracle) and through our
own loader. Expected deltas are written here from the files' tensors, not from lib_lorastack."""

from __future__ import annotations

import pytest
import torch

from lib_lorastack.doctor.bake import bake_lora
from lib_lorastack.doctor.merge import merge_stack
from lib_lorastack.doctor.report import diagnose
from lib_lorastack.doctor.stack import stack_item
from lib_lorastack.formats.loader import load_lora, parse_state_dict
from lib_lorastack.formats.targets import Family

H, MLP = 3072, 12288
DB, SB = "diffusion_model.double_blocks.0.", "diffusion_model.single_blocks.1."
CLIP_Q = "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj"
T5_Q = "t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q"
SHAPES = {  # Forge's Flux shapes (flux1.json)
    DB + "img_attn.qkv": (3 * H, H), DB + "txt_attn.qkv": (3 * H, H), DB + "img_mlp.0": (MLP, H),
    SB + "linear1": (3 * H + MLP, H), SB + "linear2": (H, H + MLP), "diffusion_model.final_layer.adaLN_modulation.1": (2 * H, H),
    CLIP_Q: (768, 768), T5_Q: (4096, 4096),
}  # fmt: skip
RANK = 4

# A: kohya (sd-scripts) names on the fused weights, alpha 8 (scale 2).
KOHYA_A = {
    "lora_unet_double_blocks_0_img_attn_qkv": DB + "img_attn.qkv",
    "lora_unet_double_blocks_0_img_mlp_0": DB + "img_mlp.0",
    "lora_unet_single_blocks_1_linear1": SB + "linear1",
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": CLIP_Q,
    "lora_te3_encoder_block_0_layer_0_SelfAttention_q": T5_Q,
}
# B: diffusers/PEFT names → (BFL weight, its rows). Row order q|k|v(|mlp) as BFL fuses them.
PEFT_B = {
    "transformer.transformer_blocks.0.attn.to_q": (DB + "img_attn.qkv", 0, H),
    "transformer.transformer_blocks.0.attn.to_k": (DB + "img_attn.qkv", H, 2 * H),
    "transformer.transformer_blocks.0.attn.to_v": (DB + "img_attn.qkv", 2 * H, 3 * H),
    "transformer.transformer_blocks.0.attn.add_q_proj": (DB + "txt_attn.qkv", 0, H),
    "transformer.transformer_blocks.0.attn.add_k_proj": (DB + "txt_attn.qkv", H, 2 * H),
    "transformer.transformer_blocks.0.attn.add_v_proj": (DB + "txt_attn.qkv", 2 * H, 3 * H),
    "transformer.single_transformer_blocks.1.attn.to_q": (SB + "linear1", 0, H),
    "transformer.single_transformer_blocks.1.proj_mlp": (SB + "linear1", 3 * H, 3 * H + MLP),
    "transformer.single_transformer_blocks.1.proj_out": (SB + "linear2", 0, H),
    "transformer.norm_out.linear": ("diffusion_model.final_layer.adaLN_modulation.1", 0, 2 * H),
}
# B's block weights: LBW's 61 Flux slots, all 1 but D00 (index 3), S01 (index 23) and OUT (index 60).
LBW_B = ",".join("0.25" if i == 3 else "0.5" if i == 23 else "0.75" if i == 60 else "1" for i in range(61))
STRENGTH_A = {"te": 0.7, "unet": 0.9}
STRENGTH_B = 1.2
BLOCK_B = {DB: 0.25, SB: 0.5, "diffusion_model.final_layer.": 0.75}


def _factors(g, out_f: int, in_f: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(out_f, RANK, generator=g) * 0.05, torch.randn(RANK, in_f, generator=g) * 0.05


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(15)
    a, b = {}, {}
    for key, module in KOHYA_A.items():
        up, down = _factors(g, *SHAPES[module])
        a.update({f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down, f"{key}.alpha": torch.tensor(8.0)})
    for name, (module, r0, r1) in PEFT_B.items():
        up, down = _factors(g, r1 - r0, SHAPES[module][1])
        b.update({f"{name}.lora_B.weight": up, f"{name}.lora_A.weight": down})
    folder = tmp_path_factory.mktemp("flux")
    save_file(a, str(folder / "a.safetensors"))
    save_file(b, str(folder / "b.safetensors"))
    return folder, a, b


def expected(module: str, a: dict, b: dict) -> torch.Tensor:
    """The stack's ΔW of one BFL weight, from the files' tensors: A at 2·up·down × (te or unet strength), B's parts
    in their rows × 1.2 × its block weight (norm_out.linear's halves swapped: diffusers has scale|shift, BFL shift|scale)."""
    delta = torch.zeros(SHAPES[module])
    for key, m in KOHYA_A.items():
        if m == module and f"{key}.lora_up.weight" in a:
            s = STRENGTH_A["te"] if m.startswith(("clip_l", "t5xxl")) else STRENGTH_A["unet"]
            delta += s * 2.0 * (a[f"{key}.lora_up.weight"] @ a[f"{key}.lora_down.weight"])
    for name, (m, r0, r1) in PEFT_B.items():
        if m == module and f"{name}.lora_B.weight" in b:
            part = b[f"{name}.lora_B.weight"] @ b[f"{name}.lora_A.weight"]
            if name.endswith("norm_out.linear"):
                part = torch.cat([part[H:], part[:H]])
            weight = next(w for prefix, w in BLOCK_B.items() if m.startswith(prefix))
            delta[r0:r1] += STRENGTH_B * weight * part
    return delta


@pytest.fixture(scope="module")
def items(files):
    folder, _, _ = files
    la, lb = load_lora(folder / "a.safetensors", Family.FLUX), load_lora(folder / "b.safetensors", Family.FLUX)
    return [
        stack_item(la, STRENGTH_A["te"], STRENGTH_A["unet"], path=str(folder / "a.safetensors")),
        stack_item(lb, 1.0, STRENGTH_B, lbw=LBW_B, path=str(folder / "b.safetensors")),
    ]


def close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    err = (got.float() - want).abs().max().item()
    assert err <= 1e-6 or err <= 1e-5 * want.abs().max().item(), f"{what}: max error {err}"


def test_bake_writes_kohya_flux_layout_and_reads_back_exactly(files, items, tmp_path) -> None:
    _, a, b = files
    baked = bake_lora(items, Family.FLUX)
    prefixes = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in baked.tensors}
    assert prefixes == {
        "lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_0_txt_attn_qkv",
        "lora_unet_double_blocks_0_img_mlp_0", "lora_unet_single_blocks_1_linear1", "lora_unet_single_blocks_1_linear2",
        "lora_unet_final_layer_adaLN_modulation_1", "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te3_encoder_block_0_layer_0_SelfAttention_q",
    }  # fmt: skip
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    assert baked.tensors[f"{qkv}.lora_up.weight"].shape == (3 * H, 4 * RANK)  # A's 4 + B's q, k, v: one pair
    assert baked.tensors[f"{qkv}.lora_down.weight"].shape == (4 * RANK, H)
    path = baked.save(tmp_path / "baked.safetensors", items)
    ours = load_lora(path, Family.FLUX)
    assert ours.family is Family.FLUX and not ours.unmatched and not ours.problems
    assert {t.rows for t in ours.modules} == {None}
    assert {t.module for t in ours.modules} == set(SHAPES)
    for target, adapter in ours.modules.items():
        up, down = adapter.low_rank_factors(dtype=torch.float32)
        close(up @ down, expected(target.module, a, b), f"our loader, {target}")


def test_baked_file_through_diffusers_kohya_flux_reader(files, items) -> None:
    from diffusers import FluxPipeline

    _, a, b = files
    baked = bake_lora(items, Family.FLUX)
    sd = FluxPipeline.lora_state_dict({k: v.clone() for k, v in baked.tensors.items()})

    def delta(name: str) -> torch.Tensor:
        if name.startswith("text_encoder."):
            return sd[f"{name}_lora.up.weight"] @ sd[f"{name}_lora.down.weight"]
        if f"{name}.lora_B.weight" not in sd:  # diffusers 0.42.1 names the top-level layers without "transformer."
            name = name.removeprefix("transformer.")
        return sd[f"{name}.lora_B.weight"] @ sd[f"{name}.lora_A.weight"]

    qkv, txt, l1 = (expected(DB + "img_attn.qkv", a, b), expected(DB + "txt_attn.qkv", a, b), expected(SB + "linear1", a, b))
    for i, part in enumerate(("to_q", "to_k", "to_v")):
        close(delta(f"transformer.transformer_blocks.0.attn.{part}"), qkv[i * H : (i + 1) * H], part)
        close(delta(f"transformer.transformer_blocks.0.attn.add_{part[-1]}_proj"), txt[i * H : (i + 1) * H], f"add_{part[-1]}")
        close(delta(f"transformer.single_transformer_blocks.1.attn.{part}"), l1[i * H : (i + 1) * H], f"single {part}")
    close(delta("transformer.single_transformer_blocks.1.proj_mlp"), l1[3 * H :], "proj_mlp")
    close(delta("transformer.single_transformer_blocks.1.proj_out"), expected(SB + "linear2", a, b), "proj_out")
    close(delta("transformer.transformer_blocks.0.ff.net.0.proj"), expected(DB + "img_mlp.0", a, b), "ff.net.0.proj")
    ada = expected("diffusion_model.final_layer.adaLN_modulation.1", a, b)
    close(delta("transformer.norm_out.linear"), torch.cat([ada[H:], ada[:H]]), "norm_out.linear (scale|shift)")
    close(delta("text_encoder.text_model.encoder.layers.0.self_attn.to_q"), expected(CLIP_Q, a, b), "CLIP-L q_proj")
    assert not any("encoder.block" in k for k in sd)  # diffusers' Flux reader has no T5 LoRA (warns); Forge/Comfy read lora_te3_


def test_doctor_measures_flux_blocks_per_lora(files, items) -> None:
    _, a, b = files
    report = diagnose(items, Family.FLUX)
    blocks = report.to_dict()["blocks"]
    assert {"D00", "S01", "OUT", "CLIP", "T5"} <= set(blocks)
    # per LoRA, per block: ‖strength · ΔW‖ over the block's weights, from the files' tensors
    for block, modules in {"D00": [DB + "img_attn.qkv", DB + "txt_attn.qkv", DB + "img_mlp.0"], "S01": [SB + "linear1", SB + "linear2"],
                           "CLIP": [CLIP_Q], "T5": [T5_Q], "OUT": ["diffusion_model.final_layer.adaLN_modulation.1"]}.items():  # fmt: skip
        na = sum(float(expected(m, a, {}).pow(2).sum()) for m in modules) ** 0.5
        nb = sum(float(expected(m, {}, b).pow(2).sum()) for m in modules) ** 0.5
        got = blocks[block]["norms"]
        assert got[0] == pytest.approx(na, rel=1e-5, abs=1e-9), block
        assert got[1] == pytest.approx(nb, rel=1e-5, abs=1e-9), block
    text = report.text()
    assert "D00" in text and "S01" in text
    assert report.png().startswith(b"\x89PNG")
    from lib_lorastack.syntax.lbw import resolve_block_weights

    suggested = [e for e in report.plan.stack if e.lbw and e.lbw != LBW_B]
    for e in suggested:  # a suggested vector is in LBW's Flux layout and reads back without a note
        assert e.lbw.count(",") + 1 == 61 and not resolve_block_weights(Family.FLUX, e.lbw).notes


def test_merge_on_flux_layers(files) -> None:
    """Merging works per BFL weight too: the linear merge of A (kohya) and B (PEFT) on ``img_attn.proj`` at a rank
    that holds both is their exact weighted sum, written under kohya's Flux name (small layers: merges are dense)."""
    _, a, _ = files
    key, name = "lora_unet_double_blocks_0_img_attn_proj", "transformer.transformer_blocks.0.attn.to_out.0"
    g = torch.Generator().manual_seed(16)
    sa, sb = {}, {}
    for sd, up_key, down_key in ((sa, f"{key}.lora_up.weight", f"{key}.lora_down.weight"), (sb, f"{name}.lora_B.weight", f"{name}.lora_A.weight")):
        sd[up_key], sd[down_key] = _factors(g, H, H)
    sa.update({k: v for k, v in a.items() if k.startswith("lora_te1_")})
    la, lb = parse_state_dict(sa, family=Family.FLUX, name="a"), parse_state_dict(sb, family=Family.FLUX, name="b")
    stack = [stack_item(la, 0.7, 0.9), stack_item(lb, 1.0, 1.2, lbw=LBW_B)]
    merged = merge_stack(stack, Family.FLUX, method="linear", rank=2 * RANK)
    clip = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    assert {k.rsplit(".", 2)[0] for k in merged.tensors if k.endswith("lora_up.weight")} == {key, clip}
    parsed = parse_state_dict(dict(merged.tensors), family=Family.FLUX, name="merged")
    assert not parsed.unmatched
    want = 0.9 * (sa[f"{key}.lora_up.weight"] @ sa[f"{key}.lora_down.weight"])
    want += 1.2 * 0.25 * (sb[f"{name}.lora_B.weight"] @ sb[f"{name}.lora_A.weight"])  # B's D00 weight
    up, down = parsed.modules[next(t for t in parsed.modules if t.module == DB + "img_attn.proj")].low_rank_factors()
    close(up @ down, want, "merged img_attn.proj")


def test_checkpoint_bake_and_base_on_an_all_in_one_flux_file(files, tmp_path) -> None:
    """A Flux checkpoint in the all-in-one spelling (model.diffusion_model.…, text_encoders.clip_l.…): the doctor
    reads the base weights from it and the checkpoint bake writes W0 + ΣΔW under the file's own keys."""
    from safetensors.torch import load_file, save_file

    from lib_lorastack.doctor.basefile import BaseCheckpoint
    from lib_lorastack.doctor.checkpoint import bake_checkpoint

    _, a, b = files
    qkv = DB + "img_attn.qkv"
    sa = {k: v for k, v in a.items() if k.startswith(("lora_unet_double_blocks_0_img_attn_qkv", "lora_te1_"))}
    sb = {k: v for k, v in b.items() if ".transformer_blocks.0.attn.to_" in k}
    stack = [stack_item(parse_state_dict(sa, family=Family.FLUX, name="a"), STRENGTH_A["te"], STRENGTH_A["unet"]),
             stack_item(parse_state_dict(sb, family=Family.FLUX, name="b"), 1.0, STRENGTH_B, lbw=LBW_B)]  # fmt: skip
    g = torch.Generator().manual_seed(17)
    keys = {"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": SHAPES[qkv], "model.diffusion_model.double_blocks.0.img_attn.qkv.bias": (3 * H,),
            "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": SHAPES[CLIP_Q],
            "vae.decoder.conv_in.weight": (4, 4, 3, 3)}  # fmt: skip
    tensors = {k: torch.randn(shape, generator=g) * 0.02 for k, shape in keys.items()}
    save_file(tensors, str(tmp_path / "flux1-aio.safetensors"))
    base = BaseCheckpoint(tmp_path / "flux1-aio.safetensors")
    assert base.family is Family.FLUX
    report = diagnose(stack, Family.FLUX, base=base)
    d00 = report.metrics.blocks["D00"]
    w0 = tensors["model.diffusion_model.double_blocks.0.img_attn.qkv.weight"]
    assert d00.combined == pytest.approx(float(expected(qkv, sa, sb).double().norm()), rel=1e-5)
    assert d00.base_sq == pytest.approx(float(w0.double().pow(2).sum()), rel=1e-6)
    result = bake_checkpoint(stack, base, tmp_path / "baked.safetensors", family=Family.FLUX)
    assert set(result.changed) == {k for k in keys if k.endswith("weight") and not k.startswith("vae.")}
    out = load_file(str(tmp_path / "baked.safetensors"))
    w = "model.diffusion_model.double_blocks.0.img_attn.qkv.weight"
    close(out[w] - tensors[w], expected(qkv, sa, sb), "fused qkv")
    c = "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    close(out[c] - tensors[c], expected(CLIP_Q, sa, sb), "CLIP-L q_proj")
    assert torch.equal(out["vae.decoder.conv_in.weight"], tensors["vae.decoder.conv_in.weight"])


def test_suggested_block_weights_are_flux_vectors() -> None:
    """Two LoRAs pulling the same way in D00 and S00 go over the budget; the one with block weights gets a 61-value
    vector (LBW's Flux layout) that scales exactly those blocks, and the suggested stack is back under budget."""
    from lib_lorastack.doctor.suggestions import block_budget
    from lib_lorastack.syntax.lbw import resolve_block_weights

    g = torch.Generator().manual_seed(18)
    sd = {}
    for key, shape in (("lora_unet_double_blocks_0_img_attn_proj", (H, H)), ("lora_unet_single_blocks_0_modulation_lin", (3 * H, H))):
        up, down = _factors(g, *shape)
        sd.update({f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down})
    one, two = parse_state_dict(dict(sd), family=Family.FLUX, name="one"), parse_state_dict(dict(sd), family=Family.FLUX, name="two")
    stack = [stack_item(one, 1.0, 1.0), stack_item(two, 1.0, 0.8, lbw="FLUXALL")]
    report = diagnose(stack, Family.FLUX)
    e = report.plan.stack[1]
    vector = resolve_block_weights(Family.FLUX, e.lbw)
    assert e.lbw.count(",") + 1 == 61 and not vector.notes
    assert vector.vector["D00"] < 1 and vector.vector["S00"] < 1
    assert all(v == 1 for b, v in vector.vector.items() if b not in ("D00", "S00"))
    again = diagnose([stack_item(one, 1.0, 1.0), stack_item(two, 1.0, 0.8, lbw=e.lbw)], Family.FLUX)
    for b in ("D00", "S00"):
        assert again.metrics.blocks[b].combined <= block_budget(report.metrics.blocks[b]) * (1 + 1e-9)
