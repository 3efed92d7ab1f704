"""Flux LoRA math and mapping against diffusers and PEFT, never against our own code:

* PEFT LoRA / DoRA merges on a reduced ``FluxTransformer2DModel`` (2 double + 2 single blocks, hidden 32) and tiny
  CLIP-L / T5 encoders, read back from a diffusers-style file and applied to Forge's fused (BFL) layers;
* diffusers' own Flux LoRA readers (``FluxPipeline.lora_state_dict``: kohya, ComfyUI, OneTrainer and XLabs
  converters) at the real widths (3072; LoRA factors only, no model), placed on the BFL weights by the row
  provenance of diffusers' single-file converter;
* lycoris-lora's LoHa / LoKr modules on Flux layers;
* the patch engine on a Forge-named Flux module map, exact against the PEFT merge, and restored bit for bit.

Tolerances: 1e-6 relative (max-normalised) or 1e-6 absolute.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

from lib_lorastack.engine import PatchEngine, StackLayer
from lib_lorastack.formats.flux_names import SWAP_SCALE_SHIFT, flux_diffusers_to_forge, flux_forge_to_diffusers
from lib_lorastack.formats.loader import parse_state_dict
from lib_lorastack.formats.model_tables import load_table
from lib_lorastack.formats.targets import Family, Target
from tests.helpers.flux_loras import lora_dict
from tests.helpers.flux_models import (
    TINY_DIMS,
    converter_row_provenance,
    shape_of_modules,
    te_forge_modules,
    tiny_flux_clip,
    tiny_flux_t5,
    tiny_flux_transformer,
    tiny_forge_transformer,
)

F = Family.FLUX
TOL = 1e-6
TRANSFORMER_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff.net.0.proj",
    "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear", "norm1_context.linear", "norm.linear",
    "proj_mlp", "proj_out", "norm_out.linear", "x_embedder", "context_embedder", "linear_1", "linear_2",
]  # fmt: skip
CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
T5_TARGETS = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]


def _swap(t: torch.Tensor) -> torch.Tensor:
    h = t.shape[0] // 2
    return torch.cat((t[h:], t[:h]))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def peft_flux_file(model, component: str, targets: list[str], *, use_dora: bool, seed: int, patterns: bool = True):
    """A PEFT adapter with noise in every factor, as diffusers saves it (prefix + LoraConfig metadata), and the weights
    PEFT merges (by module name)."""
    extra = dict(rank_pattern={"to_k": 2, "proj_mlp": 3, "norm_out.linear": 5},
                 alpha_pattern={"to_v": 3, "ff.net.2": 16, "norm_out.linear": 7, "wo": 9}) if patterns else {}  # fmt: skip
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, use_dora=use_dora, **extra)
    peft_model = inject_adapter_in_model(config, copy.deepcopy(model))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (p.abs() if "magnitude" in name else 0))
    sd = {f"{component}.{k}": v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    meta = {f"{component}.{k}": v for k, v in config.to_dict().items() if k in ("r", "lora_alpha", "use_dora")}
    meta |= {f"{component}.rank_pattern": config.rank_pattern, f"{component}.alpha_pattern": config.alpha_pattern}
    merged = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "merge") and hasattr(module, "base_layer"):
            module.merge()
            merged[name] = module.base_layer.weight.detach().clone()
    return sd, meta, merged


@pytest.fixture(scope="module")
def tiny_models():
    return tiny_flux_transformer(0), tiny_flux_clip(0), tiny_flux_t5(0)


def _bfl_base(target: Target, diffusers_model: torch.nn.Module) -> torch.Tensor:
    """The BFL weight (or row block) a target covers, read from the diffusers model through the name map (whose rows
    test_flux_formats checks against diffusers' single-file converter)."""
    name = flux_forge_to_diffusers(target, TINY_DIMS).removeprefix("transformer.")
    w = diffusers_model.get_submodule(name).weight.detach()
    hit = flux_diffusers_to_forge("transformer." + name, TINY_DIMS)
    return _swap(w) if hit.remap == SWAP_SCALE_SHIFT else w


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_every_flux_layer_equals_the_peft_merge(tiny_models, use_dora: bool) -> None:
    transformer, clip, t5 = tiny_models
    sd_x, meta_x, merged_x = peft_flux_file(transformer, "transformer", TRANSFORMER_TARGETS, use_dora=use_dora, seed=1)
    sd_c, meta_c, merged_c = peft_flux_file(clip, "text_encoder", CLIP_TARGETS, use_dora=use_dora, seed=2)
    sd_t, meta_t, merged_t = peft_flux_file(t5, "text_encoder_2", T5_TARGETS, use_dora=use_dora, seed=3)
    metadata = {"lora_adapter_metadata": json.dumps({**meta_x, **meta_c, **meta_t}, default=list)}
    modules = tiny_forge_transformer(0) | te_forge_modules(clip, t5)
    parsed = parse_state_dict({**sd_x, **sd_c, **sd_t}, family=F, metadata=metadata, shape_of=shape_of_modules(modules))
    assert not parsed.unmatched and not parsed.problems, (parsed.unmatched[:3], parsed.problems[:3])
    assert len(parsed.modules) == len(merged_x) + len(merged_c) + len(merged_t) > 70
    assert {t.rows for t in parsed.modules if t.module.endswith(".linear1")} == {(0, 32), (32, 64), (64, 96), (96, 224)}
    worst = 0.0
    for target, adapter in parsed.modules.items():
        if target.component.is_text_encoder:
            root, model, merged = ("clip_l.transformer.", clip, merged_c) if target.module.startswith("clip_l.") else (
                "t5xxl.transformer.", t5, merged_t)
            name = target.module[len(root) :]
            name = name if name in merged else name.removeprefix("text_model.")  # transformers 5 flattens CLIP
            base = model.get_submodule(name).weight.detach()
            ours, oracle = base + adapter.update(base).weight, merged[name]
        else:
            name = flux_forge_to_diffusers(target, TINY_DIMS).removeprefix("transformer.")
            base = _bfl_base(target, transformer)
            ours = base + adapter.update(base).weight
            if target.module.endswith("adaLN_modulation.1"):
                ours = _swap(ours)  # back to diffusers' (scale, shift) order
            oracle = merged_x[name]
            base = transformer.get_submodule(name).weight.detach()
        assert (oracle - base).abs().max() > 1e-3, name
        worst = max(worst, _rel(ours, oracle))
    assert worst <= TOL, worst


# ----------------------------------------------------------------- diffusers' readers at the real widths

REAL_BLOCKS = (2, 2)  # double, single


@pytest.fixture(scope="module")
def provenance():
    return converter_row_provenance(*REAL_BLOCKS)


def _real_linears(prefix_filter=lambda n: True) -> list[str]:
    out = []
    for name, info in load_table(F).modules.items():
        m = re.match(r"diffusion_model\.(double|single)_blocks\.(\d+)\.", name)
        if m and int(m.group(2)) >= REAL_BLOCKS[0 if m.group(1) == "double" else 1]:
            continue
        if name.startswith("diffusion_model.") and info.type == "Linear" and prefix_filter(name):
            out.append(name)
    return out


def _shape(name: str) -> tuple[int, int]:
    return tuple(load_table(F).modules[name].params["weight"])  # type: ignore[return-value]


def _probe(in_f: int) -> torch.Tensor:
    """Fixed random inputs: at the real widths ΔW is compared through ΔW·X (X: [in, 8]), exact up to rounding and
    blind to nothing (a difference in ΔW survives a random projection with probability 1)."""
    return torch.randn(in_f, 8, generator=torch.Generator().manual_seed(in_f), dtype=torch.float64)


def _oracle_deltas(converted: dict[str, torch.Tensor], provenance) -> dict[str, torch.Tensor]:
    """diffusers-format LoRA (alpha already folded in by the converter) → ΔW·X per BFL weight, each diffusers module's
    B·A·X placed on the rows the single-file converter takes it from."""
    from diffusers.utils.state_dict_utils import StateDictType, convert_state_dict_to_peft

    te = {k: v for k, v in converted.items() if k.startswith("text_encoder.")}  # old-style names, as diffusers' TE loader
    converted = {k: v for k, v in converted.items() if k not in te}  # converts them: to_q_lora.down → q_proj.lora_A
    converted |= convert_state_dict_to_peft(te, original_type=StateDictType.DIFFUSERS_OLD) if te else {}
    deltas: dict[str, torch.Tensor] = {}
    for key, a in converted.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        delta = converted[module + ".lora_B.weight"].double() @ (a.double() @ _probe(a.shape[1]))
        if module.startswith("text_encoder."):
            deltas["clip_l.transformer." + module[len("text_encoder.") :]] = delta
            continue
        bfl_key, rows = provenance[module.removeprefix("transformer.") + ".weight"]
        name = "diffusion_model." + bfl_key[: -len(".weight")]
        full = deltas.setdefault(name, torch.zeros(_shape(name)[0], 8, dtype=torch.float64))
        full[rows] += delta
    return deltas


def _our_deltas(parsed) -> dict[str, torch.Tensor]:
    """Our ΔW·X per Forge layer, from each adapter's low-rank factors (the engine's fused path for plain LoRA)."""
    out: dict[str, torch.Tensor] = {}
    for target, adapter in parsed.modules.items():
        out_f, in_f = load_table(F).modules[target.module].params["weight"]
        full = out.setdefault(target.module, torch.zeros(out_f, 8, dtype=torch.float64))
        view = full if target.rows is None else full[target.rows[0] : target.rows[1]]
        up, down = adapter.low_rank_factors(dtype=torch.float64)
        view += up @ (down @ _probe(in_f))
    return out


def _compare(ours: dict[str, torch.Tensor], oracle: dict[str, torch.Tensor]) -> float:
    assert ours.keys() == oracle.keys(), set(ours) ^ set(oracle)
    worst = 0.0
    for name, delta in oracle.items():
        assert delta.abs().max() > 1e-4, name
        worst = max(worst, _rel(ours[name], delta))
    return worst


def _kohya_real(spell, *, seed: int, te: bool = True) -> dict[str, torch.Tensor]:
    modules = [(spell(n[len("diffusion_model.") :]), _shape(n)) for n in _real_linears()]
    if te:
        modules += [(f"lora_te1_text_model_encoder_layers_0_{p}", s) for p, s in
                    (("self_attn_q_proj", (768, 768)), ("mlp_fc1", (3072, 768)), ("mlp_fc2", (768, 3072)))]  # fmt: skip
    # diffusers 0.42.1 drops the alpha of final_layer.* in kohya files ("TODO: alphas"; Forge and ComfyUI apply it,
    # as we do): there alpha = rank, so both agree; everywhere else alpha ≠ rank and varies
    alphas = [4.0 if "final_layer" in p else (1.0, 2.0, 16.0)[i % 3] for i, (p, _) in enumerate(modules)]
    return lora_dict(modules, rank=4, alpha=lambda i: alphas[i], seed=seed)


@pytest.mark.slow
def test_kohya_flux_as_diffusers_reads_it(provenance) -> None:
    """kohya (sd-scripts) Flux file, alpha ≠ rank and varying, fused qkv / linear1 rows q|k|v|mlp, CLIP-L part."""
    from diffusers import FluxPipeline

    sd = _kohya_real(lambda n: "lora_unet_" + n.replace(".", "_"), seed=5)
    # sd-scripts' split_qkv saves one rank-r LoRA per part as a rank-(parts·r) module with a block-diagonal lora_up;
    # diffusers reads that layout on its own path (it splits lora_down instead of copying it)
    g = torch.Generator().manual_seed(9)
    for prefix, dims in (("lora_unet_double_blocks_1_txt_attn_qkv", [3072] * 3), ("lora_unet_single_blocks_1_linear1",
                                                                                 [3072] * 3 + [12288])):  # fmt: skip
        up = torch.zeros(sum(dims), 4 * len(dims))
        for i, d in enumerate(dims):
            up[sum(dims[:i]) : sum(dims[: i + 1]), 4 * i : 4 * i + 4] = torch.randn(d, 4, generator=g) * 0.3
        sd[f"{prefix}.lora_up.weight"] = up
        sd[f"{prefix}.lora_down.weight"] = torch.randn(4 * len(dims), 3072, generator=g) / 3072**0.5
    parsed = parse_state_dict(sd, family=F)
    assert parsed.format == "kohya" and not parsed.unmatched and all(t.rows is None for t in parsed.modules)
    converted = FluxPipeline.lora_state_dict({k: v.clone() for k, v in sd.items()})
    assert _compare(_our_deltas(parsed), _oracle_deltas(converted, provenance)) <= TOL


@pytest.mark.slow
def test_comfyui_bfl_names_as_diffusers_reads_them(provenance) -> None:
    """``diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight`` (ComfyUI / Forge generic names)."""
    from diffusers import FluxPipeline

    sd = _kohya_real(lambda n: "diffusion_model." + n, seed=6, te=False)
    parsed = parse_state_dict(sd, family=F)
    assert parsed.format == "bfl" and not parsed.unmatched
    converted = FluxPipeline.lora_state_dict({k: v.clone() for k, v in sd.items()})
    assert _compare(_our_deltas(parsed), _oracle_deltas(converted, provenance)) <= TOL


@pytest.mark.slow
def test_onetrainer_flux_as_diffusers_reads_it(provenance) -> None:
    """OneTrainer's ``lora_transformer_<diffusers name>``. diffusers' reader for it (the "mixture" converter) knows the
    attention parts of the blocks and the top-level layers only (it drops the name of a block's ff / norm / proj_out
    layers), so those are what it can vouch for; the other parts use the same map and are checked by the PEFT test."""
    from diffusers import FluxPipeline

    parts = [(d, s) for name in _real_linears() for d, s in _diffusers_parts(name)]
    parts = [(d, s) for d, s in parts if ".attn." in d or "blocks." not in d]
    assert any(d.endswith("single_transformer_blocks.1.attn.to_v") for d, _ in parts)
    modules = [("lora_transformer_" + d.removeprefix("transformer.").replace(".", "_"), s) for d, s in parts]
    modules += [("lora_te1_text_model_encoder_layers_1_self_attn_v_proj", (768, 768))]
    sd = lora_dict(modules, rank=4, alpha=lambda i: (2.0, 8.0)[i % 2], seed=7)
    parsed = parse_state_dict(sd, family=F)
    assert parsed.format == "kohya+onetrainer" and not parsed.unmatched
    converted = FluxPipeline.lora_state_dict({k: v.clone() for k, v in sd.items()})
    assert _compare(_our_deltas(parsed), _oracle_deltas(converted, provenance)) <= TOL


def _diffusers_parts(module: str) -> list[tuple[str, tuple[int, int]]]:
    """The diffusers modules (name, weight shape) that make up one BFL Linear, from our map (rows checked elsewhere)."""
    out = []
    shape = _shape(module)
    whole = flux_forge_to_diffusers(Target(module))
    if whole:
        return [(whole, shape)]
    h = 3072
    starts = [0, h, 2 * h] + ([3 * h] if module.endswith("linear1") else [])
    for start in starts:
        stop = start + (h if start < 3 * h else shape[0] - 3 * h)
        name = flux_forge_to_diffusers(Target(module, "weight", (start, stop)))
        out.append((name, (stop - start, shape[1])))
    return out


@pytest.mark.slow
def test_xlabs_flux_as_diffusers_reads_it(provenance) -> None:
    from diffusers import FluxPipeline

    modules = []
    for n in range(REAL_BLOCKS[0]):
        modules += [(f"double_blocks.{n}.processor.qkv_lora1", (9216, 3072)), (f"double_blocks.{n}.processor.qkv_lora2", (9216, 3072)),
                    (f"double_blocks.{n}.processor.proj_lora1", (3072, 3072)), (f"double_blocks.{n}.processor.proj_lora2", (3072, 3072))]  # fmt: skip
    for n in range(REAL_BLOCKS[1]):
        modules += [(f"single_blocks.{n}.processor.qkv_lora", (9216, 3072)), (f"single_blocks.{n}.processor.proj_lora", (3072, 15360))]
    sd = lora_dict(modules, down_key="down.weight", up_key="up.weight", rank=4, seed=8)
    parsed = parse_state_dict(sd, family=F)
    assert parsed.format == "xlabs" and not parsed.unmatched
    converted = FluxPipeline.lora_state_dict({k: v.clone() for k, v in sd.items()})
    assert _compare(_our_deltas(parsed), _oracle_deltas(converted, provenance)) <= TOL


# ----------------------------------------------------------------- lycoris-lora on Flux layers


def _probe_weight(layer: torch.nn.Module, in_f: int) -> torch.Tensor:
    with torch.no_grad():
        return (layer(torch.eye(in_f)) - layer(torch.zeros(1, in_f))).t()


@pytest.mark.parametrize("algo", ["loha", "lokr", "locon-dora"])
def test_lycoris_modules_on_flux_layers(tiny_models, algo: str) -> None:
    """A LyCORIS network on the diffusers model (SimpleTuner writes ``lycoris_<diffusers name>``) and one on Forge's
    fused qkv (``lora_unet_…``): each module's change, as lycoris-lora's forward computes it, is ours."""
    from lycoris.modules.locon import LoConModule
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule

    transformer = copy.deepcopy(tiny_models[0])
    forge = tiny_forge_transformer(1)
    make = {"loha": lambda n, m: LohaModule(n, m, multiplier=1.0, lora_dim=4, alpha=2),
            "lokr": lambda n, m: LokrModule(n, m, multiplier=1.0, lora_dim=4, alpha=2, factor=4),
            "locon-dora": lambda n, m: LoConModule(n, m, multiplier=1.0, lora_dim=4, alpha=2, weight_decompose=True)}[algo]  # fmt: skip
    layers = [
        ("lycoris_single_transformer_blocks_1_attn_to_k", transformer.get_submodule("single_transformer_blocks.1.attn.to_k"),
         Target("diffusion_model.single_blocks.1.linear1", "weight", (32, 64))),
        ("lycoris_single_transformer_blocks_0_proj_mlp", transformer.get_submodule("single_transformer_blocks.0.proj_mlp"),
         Target("diffusion_model.single_blocks.0.linear1", "weight", (96, 224))),
        ("lora_unet_double_blocks_1_txt_attn_qkv", forge["diffusion_model.double_blocks.1.txt_attn.qkv"],
         Target("diffusion_model.double_blocks.1.txt_attn.qkv")),
    ]  # fmt: skip
    sd, oracle, bases = {}, {}, {}
    for i, (prefix, layer, target) in enumerate(layers):
        base = layer.weight.detach().clone()
        lyco = make(prefix, layer)
        g = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for name, p in lyco.named_parameters():
                if "org" not in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if "dora" in name else 0.0))
        state = lyco.custom_state_dict() or {k: v for k, v in lyco.state_dict().items() if k in type(lyco).weight_list}
        sd |= {f"{prefix}.{k}": v.detach().clone() for k, v in state.items()}
        lyco.apply_to()
        oracle[target], bases[target] = _probe_weight(layer, base.shape[1]), base
    modules = tiny_forge_transformer(0)
    parsed = parse_state_dict(sd, family=F, shape_of=shape_of_modules(modules))
    assert set(parsed.modules) == set(oracle) and not parsed.unmatched
    for target, adapter in parsed.modules.items():
        ours = bases[target] + adapter.update(bases[target]).weight
        assert (oracle[target] - bases[target]).abs().max() > 1e-3
        assert _rel(ours, oracle[target]) <= TOL, target


# ----------------------------------------------------------------- the engine on a Forge-named Flux model


def _forge_from_diffusers(transformer: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Forge's fused layers filled with the diffusers model's weights (rows through the checked name map)."""
    modules = tiny_forge_transformer(0)
    with torch.no_grad():
        for name, layer in modules.items():
            whole = Target(name)
            if flux_forge_to_diffusers(whole, TINY_DIMS):
                layer.weight.copy_(_bfl_base(whole, transformer))
                continue
            h = TINY_DIMS.hidden
            for start in range(0, layer.weight.shape[0], h):
                stop = start + h if start < 3 * h else layer.weight.shape[0]
                layer.weight[start:stop] = _bfl_base(Target(name, "weight", (start, stop)), transformer)
                if stop == layer.weight.shape[0]:
                    break
    return modules


def test_engine_patches_flux_exactly_and_restores_bits(tiny_models) -> None:
    transformer, clip, t5 = tiny_models
    sd_x, meta_x, merged_x = peft_flux_file(transformer, "transformer", TRANSFORMER_TARGETS, use_dora=False, seed=21)
    metadata = {"lora_adapter_metadata": json.dumps(meta_x, default=list)}
    modules = _forge_from_diffusers(transformer) | te_forge_modules(copy.deepcopy(clip), copy.deepcopy(t5))
    shape_of = shape_of_modules(modules)
    diffusers_lora = parse_state_dict(sd_x, family=F, metadata=metadata, shape_of=shape_of, name="peft")
    kohya_modules = [("lora_unet_double_blocks_0_img_attn_qkv", (96, 32)), ("lora_unet_single_blocks_1_linear1", (224, 32)),
                     ("lora_unet_final_layer_adaLN_modulation_1", (64, 32)),
                     ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", (16, 16)),
                     ("lora_te2_encoder_block_1_layer_1_DenseReluDense_wi_0", (32, 16))]  # fmt: skip
    kohya_lora = parse_state_dict(lora_dict(kohya_modules, rank=2, alpha=lambda i: 1.0, seed=22), family=F, shape_of=shape_of,
                                  name="kohya")  # fmt: skip
    assert len(kohya_lora.modules) == 5 and not kohya_lora.unmatched
    pristine = {n: m.weight.detach().clone() for n, m in modules.items()}
    engine = PatchEngine(modules)

    report = engine.apply([StackLayer(diffusers_lora, te=1.0, unet=1.0)])
    assert not report.skipped
    oracle = _forge_from_diffusers(_merged_model(transformer, merged_x))
    for name in oracle:
        assert _rel(modules[name].weight, oracle[name].weight) <= TOL, name

    report = engine.apply([StackLayer(diffusers_lora), StackLayer(kohya_lora, te=0.5, unet=0.75)])
    assert not report.skipped
    for target, adapter in kohya_lora.modules.items():
        strength = 0.5 if target.component.is_text_encoder else 0.75
        expected = (oracle[target.module].weight if target.module in oracle else pristine[target.module]) + strength * adapter.update(
            pristine[target.module]).weight  # fmt: skip
        assert _rel(modules[target.module].weight, expected) <= TOL, target

    engine.clear()
    for name, module in modules.items():
        assert torch.equal(module.weight.view(torch.int32), pristine[name].view(torch.int32)), name


def _merged_model(transformer: torch.nn.Module, merged: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = copy.deepcopy(transformer)
    with torch.no_grad():
        for name, weight in merged.items():
            model.get_submodule(name).weight.copy_(weight)
    return model


# ----------------------------------------------------------------- PEFT at the real widths


def _fill_(model: torch.nn.Module, seed: int) -> None:
    """Seeded noise in every parameter, drawn once and copied by windows (normal_ on 10⁹ values is slow)."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn((1 << 22) + 7, generator=g) * 0.05
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            flat = p.view(-1)
            for start in range(0, flat.numel(), pool.numel() - 7):
                n = min(pool.numel() - 7, flat.numel() - start)
                flat[start : start + n].copy_(pool[i % 7 : i % 7 + n])


@pytest.mark.slow
def test_peft_merge_at_the_real_widths() -> None:
    """The reduced-depth FluxTransformer2DModel at FLUX.1's real widths (hidden 3072, 2 double + 2 single blocks,
    ~1.0 B parameters, ~4 GB): a PEFT LoRA on every Linear, read with flux1.json's own shapes, equals PEFT's merge."""
    from diffusers import FluxTransformer2DModel

    from tests.helpers.flux_models import REAL_FLUX

    with torch.device("meta"):
        model = FluxTransformer2DModel(**REAL_FLUX)
    model.to_empty(device="cpu").requires_grad_(False)
    _fill_(model, 0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TRANSFORMER_TARGETS, init_lora_weights=False,
                        alpha_pattern={"to_v": 3, "proj_mlp": 16, "norm_out.linear": 2})  # fmt: skip
    inject_adapter_in_model(config, model)
    g = torch.Generator().manual_seed(31)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    sd = {f"transformer.{k}": v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    meta = {"transformer.r": 4, "transformer.lora_alpha": 8, "transformer.alpha_pattern": config.alpha_pattern}
    parsed = parse_state_dict(sd, family=F, metadata={"lora_adapter_metadata": json.dumps(meta)})
    assert not parsed.unmatched and not parsed.problems
    by_name = {flux_forge_to_diffusers(t).removeprefix("transformer."): (t, a) for t, a in parsed.modules.items()}
    worst, checked = 0.0, 0
    for name, module in model.named_modules():
        if not (hasattr(module, "merge") and hasattr(module, "base_layer")):
            continue
        base = module.base_layer.weight.detach().clone()
        module.merge()
        merged = module.base_layer.weight.detach()
        target, adapter = by_name.pop(name)
        swap = target.module.endswith("adaLN_modulation.1")
        bfl = _swap(base) if swap else base
        ours = bfl + adapter.update(bfl).weight
        worst = max(worst, _rel(_swap(ours) if swap else ours, merged))
        assert (merged - base).abs().max() > 1e-3, name
        checked += 1
        del base, ours, bfl
    assert not by_name and checked == len(parsed.modules) == 50  # 2 × 14 + 2 × 6 + 10 top-level parts
    assert worst <= TOL, worst
