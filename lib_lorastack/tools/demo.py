"""``python -m lib_lorastack demo``: the main job on the built-in example.

Parses a prompt with tags, resolves the example LoRAs, builds an SD1.5-shaped model (the WebUI's real module
names and shapes, random weights), applies the stack fused and then online, checks that both compute the same
outputs, restores the model and checks the weights are the base weights bit for bit, and prints the timings.
"""

from __future__ import annotations

import argparse
import time

import torch

from ..engine import PatchEngine, StackLayer, resolve_modules
from ..formats.targets import Family
from ..stack.catalog import LoraCatalog
from ..stack.resolve import resolve_request
from ..syntax import format_request, parse_prompt
from .examples import ensure_examples
from .skeleton import build_skeleton

DEFAULT_PROMPT = (
    "portrait of a girl, watercolor <lora:example_character:0.8> <lora:example_style:0.6:lbw=OUTALL> "
    "<lora:example_detail:0.4:0.3>"
)
DEFAULT_NEGATIVE = "blurry, lowres"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def _touched(stack: list[StackLayer]) -> set[tuple[str, str]]:
    return {(t.module, t.param) for layer in stack for t in layer.lora.modules}


def _sample_outputs(modules: dict[str, torch.nn.Module], names: list[str], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        for name in names:
            m = modules[name]
            if isinstance(m, torch.nn.Linear):
                x = torch.randn(4, m.in_features, generator=g).to(m.weight.dtype)
            else:
                x = torch.randn(1, m.in_channels, 16, 16, generator=g).to(m.weight.dtype)
            out[name] = m(x).float()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_lorastack demo", description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--negative", default=DEFAULT_NEGATIVE)
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument("--examples-dir", default=None, help="where the example LoRAs are (generated on first use)")
    parser.add_argument("--unet-only-subset", action="store_true", help="build only the touched layers (fast, for tests)")
    args = parser.parse_args(argv)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]

    paths = ensure_examples(args.examples_dir)
    catalog = LoraCatalog(paths[0].parent)
    request = parse_prompt(args.prompt, args.negative)
    print(f"prompt      : {args.prompt}")
    print(f"text prompt : {request.prompt.strip()}")
    print(f"stack       : {format_request(request)}")
    for d in request.diagnostics:
        print(f"  {d.severity}: {d.message} (chars {d.span[0]}–{d.span[1]} of the {d.source} prompt)")

    t = time.perf_counter()
    resolved = resolve_request(request, catalog, Family.SD1)
    t_load = time.perf_counter() - t
    for message in resolved.messages:
        print(f"  warning: {message}")
    for name, bw in resolved.block_weights.items():
        print(f"  {name}: block weights {' '.join(f'{k}={v:g}' for k, v in bw.vector.items())}")
    stack = resolved.layers
    if not stack:
        print("nothing to apply")
        return 1
    touched = _touched(stack)
    touched_modules = {m for m, _ in touched}

    t = time.perf_counter()
    select = (lambda n: any(n == m or n.startswith(m + ".") or m.startswith(n + ".") for m in touched_modules)) if args.unet_only_subset else None
    model = build_skeleton(Family.SD1, dtype=dtype, select=select)
    modules = resolve_modules(model)
    t_build = time.perf_counter() - t
    n_params = sum(p.numel() for p in model.parameters())
    pristine = {k: getattr(modules[k[0]], k[1]).detach().clone() for k in touched}
    print(f"\nmodel       : SD1.5-shaped, {n_params / 1e6:.0f}M parameters, {args.dtype}, built in {t_build:.1f} s")
    print(f"LoRAs       : {', '.join(f'{layer.lora.name} ({len(layer.lora.modules)} layers)' for layer in stack)}, loaded in {t_load * 1000:.0f} ms")

    probe = sorted(m for m in touched_modules if isinstance(modules[m], torch.nn.Linear | torch.nn.Conv2d))
    fused = PatchEngine(modules, mode="fused")
    r_apply = fused.apply(stack)
    r_again = fused.apply(stack)
    changed = [StackLayer(s.lora, s.te, s.unet * 0.5, s.block_weight, s.start, s.stop) if i == 1 else s for i, s in enumerate(stack)]
    r_incr = fused.apply(changed)
    fused.apply(stack)
    y_fused = _sample_outputs(modules, probe)
    r_clear = fused.clear()
    restored = all(torch.equal(getattr(modules[m], p).view(torch.uint8), pristine[(m, p)].view(torch.uint8)) for m, p in touched)

    online = PatchEngine(modules, mode="online")
    r_online = online.apply(stack)
    r_online_incr = online.apply(changed)
    online.apply(stack)
    y_online = _sample_outputs(modules, probe)
    online.clear()
    restored_online = all(torch.equal(getattr(modules[m], p).view(torch.uint8), pristine[(m, p)].view(torch.uint8)) for m, p in touched)
    worst = max(float((y_fused[n] - y_online[n]).abs().max() / y_fused[n].abs().max().clamp_min(1e-12)) for n in probe)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2

    print("\nfused (weights written, zero cost per step)")
    print(f"  apply stack              {_ms(r_apply.seconds)}  {r_apply.layers_written} weights written, {r_apply.bytes_backed_up / 2**20:.0f} MiB backed up")
    print(f"  apply same stack again   {_ms(r_again.seconds)}  {r_again.weight_writes} writes")
    print(f"  change one LoRA's weight {_ms(r_incr.seconds)}  {r_incr.weight_writes} writes (only that LoRA's UNet layers)")
    print(f"  clear                    {_ms(r_clear.seconds)}  {r_clear.layers_restored} weights restored")
    print("online (LoRAs added in the forward, weights untouched)")
    print(f"  apply stack              {_ms(r_online.seconds)}  {r_online.online_params} layers online, {r_online.fused_params} fused, {r_online.weight_writes} writes")
    print(f"  change one LoRA's weight {_ms(r_online_incr.seconds)}  {r_online_incr.weight_writes} writes")
    print(f"\nfused vs online outputs  : max relative difference {worst:.2e} over {len(probe)} layers ({'agree' if worst <= tolerance else 'DIFFER'})")
    print(f"restore after fused      : {'bit for bit' if restored else 'NOT EXACT'}")
    print(f"restore after online     : {'bit for bit' if restored_online else 'NOT EXACT'}")
    _doctor(request, catalog, paths[0].parent)
    return 0 if restored and restored_online and worst <= tolerance else 1


def _doctor(request, catalog: LoraCatalog, folder) -> None:
    """The stack doctor's report on the same stack, and its heatmap next to the example LoRAs."""
    from ..doctor import StackInputError, diagnose, load_stack
    from ..doctor.stack import sources_from_request

    print("\nstack doctor")
    try:
        family, items = load_stack(sources_from_request(request, catalog), Family.SD1)
    except StackInputError as e:
        print(f"  skipped: {e}")
        return
    report = diagnose(items, family)
    print(report.text())
    png = folder / "doctor.png"
    png.write_bytes(report.png())
    print(f"heatmap: {png}")
