"""``python -m benchmarks.gpu_check``: the engine's exactness on the device it runs on (CUDA when present, else the
CPU, and it says so). PASS/FAIL lines and an exit code.

On an SD1.5-shaped UNet and text encoder in fp16, with the example LoRAs (LoRA, LoCon, LoHa) and five rank-32
LoRAs on every attention, feed-forward and projection layer:
* bitwise restore after 40 random stacks, backups on the CPU and on the device;
* incremental (and CUDA-graph replays) == the same stack applied from scratch without graphs, bit for bit;
* a fault injected at a random point leaves every weight as it was, bit for bit (30 trials per backup place);
* fused and online outputs agree;
* the tensor-core products are as exact as fp32 ones (against float64);
* a ``torch.compile``d function stays valid after an in-place switch, with no recompilation;
* a mixed LyCORIS stack (LoRA, LoCon, LoHa, LoKr, DoRA) switched on the graph path == per-weight writes;
* online strength switches that skip planning == planned online applies.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import torch

from lib_lorastack.engine import PatchEngine, StackLayer, resolve_modules
from lib_lorastack.errors import PatchError
from lib_lorastack.formats.loader import load_lora, parse_state_dict
from lib_lorastack.formats.targets import Family
from lib_lorastack.syntax.lbw import resolve_block_weights
from lib_lorastack.tools.examples import ensure_examples
from lib_lorastack.tools.skeleton import build_skeleton

from .models import lycoris_file, make_loras, realistic_loras

F = Family.SD1
QUICK_SUBSET = ("input_blocks.1.", "input_blocks.4.", "middle_block.1.", "output_blocks.9.", "layers.0.", "layers.11.")


class Checks:
    def __init__(self) -> None:
        self.failed = 0

    def report(self, name: str, ok: bool, detail: str = "") -> None:
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""), flush=True)


def snapshot(modules) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in modules.items():
        for pname, p in m.named_parameters(recurse=False):
            out[f"{name}.{pname}"] = p.detach().clone()
    return out


def differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    bad = [k for k in a if k not in b or a[k].shape != b[k].shape or not torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8))]
    return bad + [k for k in b if k not in a]


def random_stack(rng: random.Random, loras, blocks) -> list[StackLayer]:
    chosen = rng.sample(loras, rng.randint(1, min(5, len(loras))))
    stack = []
    for lora in chosen:
        te = rng.choice([0.0, 1.0, round(rng.uniform(-1, 1.5), 3)])
        unet = rng.choice([0.5, 1.0, round(rng.uniform(-1, 2), 3), 0.0])
        bw = rng.choice([None, None, blocks["OUTALL"], blocks["INALL"]])
        stack.append(StackLayer(lora, te=te, unet=unet, block_weight=bw))
    return stack


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="a few layers and trials (default on the CPU)")
    p.add_argument("--stacks", type=int, default=40)
    p.add_argument("--faults", type=int, default=30)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    quick = args.quick or device.type == "cpu"
    if device.type == "cpu":
        print("no CUDA device: running the GPU check on the CPU (a quick subset)", flush=True)
        args.stacks, args.faults = min(args.stacks, 12), min(args.faults, 8)
    else:
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    started = time.perf_counter()
    checks = Checks()
    select = (lambda n: any(s in n for s in QUICK_SUBSET)) if quick else (lambda n: not n.startswith("first_stage_model"))
    model = build_skeleton(F, dtype=torch.float16, device=device, select=select, seed=3)
    modules = resolve_modules(model)
    loras = [load_lora(path, F) for path in ensure_examples()]
    loras += [parse_state_dict(sd, family=F, name=f"r32_{i}") for i, sd in enumerate(make_loras(F, count=5 if not quick else 2, dtype=torch.float16))]
    blocks = {name: resolve_block_weights(F, name).weight_for for name in ("OUTALL", "INALL")}
    base = snapshot(modules)
    rng = random.Random(2026)

    for place in ("cpu", "device"):
        engine = PatchEngine(modules, backup_device=place)
        bad_incremental = 0
        for i in range(args.stacks):
            stack = random_stack(rng, loras, blocks)
            engine.apply(stack)
            if i % 4 == 3:  # incremental (graphs included) vs from scratch without graphs
                now = snapshot(modules)
                fresh = PatchEngine(modules, backup_device=place, graphs=False)
                engine.clear()
                fresh.apply(stack)
                bad_incremental += bool(differences(snapshot(modules), now))
                fresh.clear()
                engine.apply(stack)
        engine.clear()
        diff = differences(snapshot(modules), base)
        checks.report(f"bitwise restore after {args.stacks} random stacks, backups on {place}", not diff, f"{len(diff)} tensors differ" if diff else "")
        checks.report(f"incremental == from scratch, backups on {place}", bad_incremental == 0,
                      f"{bad_incremental} of {args.stacks // 4} differed; graphs: {engine.graphs.captures} captured, {engine.graphs.replays} replayed")

        bad_faults = trials = 0
        while trials < args.faults:
            engine.apply(random_stack(rng, loras, blocks))
            before = snapshot(modules)
            nxt = random_stack(rng, loras, blocks)
            engine._fail_after_writes = rng.randint(0, 40)
            try:
                engine.apply(nxt)
            except PatchError:
                trials += 1
                bad_faults += bool(differences(snapshot(modules), before))
            engine._fail_after_writes = None
        engine.clear()
        diff = differences(snapshot(modules), base)
        checks.report(f"fault injection leaves the weights as before ({trials} trials), backups on {place}",
                      bad_faults == 0 and not diff, f"{bad_faults} trials differed" if bad_faults else "")

    # Graph replay == eager, switch after switch (strength-only changes of a big stack), against a second copy of
    # the model patched eagerly from scratch each time.
    big = [lora for lora in loras if lora.name.startswith("r32_")]
    twin = resolve_modules(build_skeleton(F, dtype=torch.float16, device=device, select=select, seed=3))
    engine = PatchEngine(modules)
    eager = PatchEngine(twin, graphs=False)
    mismatched = 0
    for k in range(6):
        stack = [StackLayer(lora, te=0.3 + 0.1 * k, unet=1.1 - 0.15 * k + 0.05 * i) for i, lora in enumerate(big)]
        engine.apply(stack)
        eager.clear()
        eager.apply(stack)
        mismatched += bool(differences(snapshot(modules), snapshot(twin)))
    engine.clear()
    eager.clear()
    del twin, eager
    diff = differences(snapshot(modules), base)
    checks.report("clear after fast switches restores bit for bit", not diff, f"{len(diff)} tensors differ" if diff else "")
    checks.report("strength switches (CUDA graph captures and replays where available) == eager writes from scratch", mismatched == 0,
                  f"{mismatched} of 6 differed; graphs: {engine.graphs.captures} captured, {engine.graphs.replays} replayed"
                  + (f"; {engine.graphs.failures[0]}" if engine.graphs.failures else ""))

    # Half-precision split products vs float64, and the fused weights vs the exactly rounded reference.
    if device.type == "cuda":
        from lib_lorastack.engine.fused import SPLIT, SPLIT_PARTS, choose_path, prepare_split
        from lib_lorastack.engine.plan import build_plan

        engine = PatchEngine(modules)
        stack = [StackLayer(lora, unet=0.7 - 0.2 * i, te=0.5) for i, lora in enumerate(big)]
        plans, _ = build_plan(stack, None, engine._binder, engine._choose_mode, engine._blocks)
        sample = list(plans.values())[:40]
        w0s = {plan.key: engine._param(plan.key).detach().clone() for plan in sample}
        engine.apply(stack)
        worst_split = worst_fp32 = 0.0
        off = total = split_used = 0
        for plan in sample:
            param = engine._param(plan.key)
            program = engine.program(plan, param)
            if program.up_t is None:
                continue
            values = torch.tensor(program.scale_values(plan.strengths, "fp32"))
            plain = torch.repeat_interleave(values, torch.tensor(program.ranks)).to(device)
            exact = (program.up_t.double() * plain.double().view(-1, 1)).t() @ program.down().double()
            fp32 = (program.up_t * plain.view(-1, 1)).t() @ program.down()
            worst_fp32 = max(worst_fp32, ((fp32.double() - exact).norm() / exact.norm()).item())
            if choose_path(program, plan.strengths, param, True) == SPLIT:
                split_used += 1
                scale = plain * 2.0**program.exponent
                operand = prepare_split([program], scale, program.half_dtype)[0]
                parts = SPLIT_PARTS[program.half_dtype]
                with torch.no_grad():
                    product = operand.double() @ program.down_parts(parts).double() * 2.0**-program.exponent
                worst_split = max(worst_split, ((product - exact).norm() / exact.norm()).item())
            reference = (w0s[plan.key].double().view(exact.shape) + exact).to(param.dtype).view(param.shape)
            off += int((reference != param).sum())
            total += param.numel()
        engine.clear()
        checks.report(f"split half-precision products as exact as fp32 (vs float64, {split_used} weights on the split path)",
                      split_used > 0 and worst_split <= max(1e-6, 2 * worst_fp32),
                      f"worst relative error {worst_split:.2e} (fp32 SGEMM {worst_fp32:.2e})")
        checks.report("fused weights equal the exactly rounded W0 + ΔW (float64 reference)", off <= 1e-3 * total,
                      f"{off} of {total} elements one rounding step off (ties of the fp32 accumulation)")
    else:
        print(f"SKIP  half-precision split products (no GPU: {device})", flush=True)

    # Fused and online outputs agree.
    stack = [StackLayer(loras[0], te=0.8, unet=0.7), StackLayer(loras[1], unet=0.6), StackLayer(loras[2], unet=0.5), StackLayer(big[0], unet=0.4)]
    layers = [n for n, m in modules.items() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d) and n.startswith("model.")][::6]
    inputs = {}
    for n in layers:
        m = modules[n]
        shape = (2, 77, m.in_features) if isinstance(m, torch.nn.Linear) else (2, m.in_channels, 16, 16)
        inputs[n] = torch.randn(shape, device=device, dtype=torch.float16)
    fused = PatchEngine(modules)
    fused.apply(stack)
    with torch.no_grad():
        want = {n: modules[n](inputs[n]).float() for n in layers}
    fused.clear()
    online = PatchEngine(modules, mode="online")
    online.apply(stack)
    with torch.no_grad():
        worst = max(((modules[n](inputs[n]).float() - want[n]).norm() / want[n].norm()).item() for n in layers)
    online.clear()
    checks.report(f"fused and online outputs agree ({len(layers)} layers, fp16)", worst < 5e-3, f"worst relative difference {worst:.1e}")

    # torch.compile stays valid after an in-place switch.
    try:
        import torch._dynamo as dynamo

        name = next(n for n in layers if isinstance(modules[n], torch.nn.Linear))
        layer = modules[name]
        x = inputs[name]
        fn = torch.compile(lambda t: layer(t) * 2, backend="inductor" if device.type == "cuda" else "aot_eager")
        dynamo.config.error_on_recompile = True
        with torch.no_grad():
            fn(x)
            engine = PatchEngine(modules)
            engine.apply([StackLayer(big[0], unet=0.9)])
            got = fn(x)
            want = layer(x) * 2
            engine.apply([StackLayer(big[0], unet=-0.4)])
            got2 = fn(x)
            want2 = layer(x) * 2
            engine.clear()
        ok = torch.allclose(got.float(), want.float(), atol=1e-2) and torch.allclose(got2.float(), want2.float(), atol=1e-2)
        checks.report("torch.compile'd function valid after in-place switches, no recompilation", ok)
    except Exception as exc:  # a recompilation raises here
        checks.report("torch.compile'd function valid after in-place switches, no recompilation", False, f"{type(exc).__name__}: {exc}"[:300])
    finally:
        torch._dynamo.config.error_on_recompile = False

    # The LyCORIS types on the grouped, replayed path (issue 17): a mixed stack switched back and forth, against a
    # twin written per weight from scratch without graphs; and the online strength switch that skips planning.
    mixed = [parse_state_dict(sd, family=F, name=name) for name, sd in realistic_loras(F, torch.float16).items()]
    mixed.append(parse_state_dict(lycoris_file(F, "lokr", rank=8), family=F, name="lokr"))
    twin = resolve_modules(build_skeleton(F, dtype=torch.float16, device=device, select=select, seed=3))
    engine = PatchEngine(modules)
    eager = PatchEngine(twin, graphs=False)
    mismatched = 0
    for k in range(6):
        stack = [StackLayer(lora, unet=0.9 - 0.1 * k + 0.07 * i) for i, lora in enumerate(mixed)]
        engine.apply(stack)
        eager.clear()
        eager.apply(stack)
        mismatched += bool(differences(snapshot(modules), snapshot(twin)))
    engine.clear()
    eager.clear()
    checks.report("mixed stack (LoRA, LoCon, LoHa, LoKr, DoRA) switches on the graph path == per-weight writes from scratch",
                  mismatched == 0 and (device.type == "cpu" or engine.graphs.replays > 0),
                  f"{mismatched} of 6 differed; graphs: {engine.graphs.captures} captured, {engine.graphs.replays} replayed"
                  + (f"; {engine.graphs.failures[0]}" if engine.graphs.failures else ""))
    online = PatchEngine(modules, mode="online")
    planned = PatchEngine(twin, mode="online")
    probe = [n for n in layers if isinstance(modules[n], torch.nn.Linear)]
    mismatched = fast = 0
    for k in range(5):
        stack = [StackLayer(lora, unet=0.9 - 0.2 * k + 0.05 * i) for i, lora in enumerate(big)]
        online.apply(stack)
        fast += online._fast_online_switch is not None
        planned.clear()
        planned.apply(stack)
        with torch.no_grad():
            mismatched += any(not torch.equal(modules[n](inputs[n]), twin[n](inputs[n])) for n in probe)
    online.clear()
    planned.clear()
    del twin, eager, planned
    checks.report("online strength switches without planning == planned online applies (outputs bit for bit)",
                  mismatched == 0 and fast == 5, f"{mismatched} of 5 differed; fast switch ready {fast} of 5")

    diff = differences(snapshot(modules), base)
    checks.report("model pristine at the end", not diff)
    print(f"{'ALL PASS' if not checks.failed else f'{checks.failed} FAILED'} in {time.perf_counter() - started:.0f} s", flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
