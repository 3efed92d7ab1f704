"""``python -m lib_lorastack doctor|bake|merge``: the stack from ``<lora:…>`` tags (found in ``--lora-dir``) and/or
``FILE[:WEIGHT[:tag arguments]]``; every user mistake gets a message naming the thing and the fault, exit status 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..errors import LoraStackError
from ..stack.catalog import LoraCatalog
from ..syntax import parse_prompt
from .bake import bake_lora
from .basefile import BaseCheckpoint
from .checkpoint import bake_checkpoint
from .merge import MERGE_METHODS, SIGN_METHODS, merge_stack
from .output import check_output
from .progress import ProgressLine, no_progress
from .report import diagnose
from .stack import StackInputError, StackSource, load_stack, parse_file_arg, sources_from_request

STACK_HELP = """The stack: <lora:NAME:…> tags (a whole prompt is fine; names are found in --lora-dir as the WebUI finds
them) and/or LoRA files as FILE[:WEIGHT[:more tag arguments]], e.g. style.safetensors:0.6:lbw=OUTALL."""
_SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _density(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be in (0, 1] (the share of each change that is kept)")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m lib_lorastack {command}", description=description, epilog=STACK_HELP)
    p.add_argument("stack", nargs="*", help="<lora:…> tags or FILE[:WEIGHT[:…]]")
    p.add_argument("--prompt", action="append", default=[], help="a prompt with <lora:…> tags (repeatable)")
    p.add_argument("--lora-dir", action="append", default=[], metavar="DIR", help="where tag names are looked up (repeatable)")
    p.add_argument("--family", choices=["sd1", "sd2", "sdxl", "flux"], help="the base model (detected from the LoRAs when omitted)")
    p.add_argument("--base", metavar="CHECKPOINT", help="the base checkpoint (.safetensors)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", default="auto", help="where to compute: auto (GPU when there is one), cpu, cuda, …")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def _sources(args) -> list[StackSource]:
    catalog = LoraCatalog(*args.lora_dir) if args.lora_dir else None
    sources: list[StackSource] = []
    prompts = list(args.prompt)
    texts = [("prompt", p) for p in prompts] + [("prompt" if "<" in a else "file", a) for a in args.stack]

    problems: list[str] = []
    for kind, text in texts:
        if kind == "file":
            source = parse_file_arg(text)
            for w in source.warnings:
                print(f"warning: {w}", file=sys.stderr)
            sources.append(source)
            continue
        request = parse_prompt(text)
        for d in request.diagnostics:
            if d.severity == "warning":
                print(f"warning: {d.message}", file=sys.stderr)
        if not request.entries and not request.errors:
            problems.append(f"{text!r} has no <lora:…> tag")
            continue
        if catalog is None:
            problems.append(f"the tags in {text!r} need --lora-dir DIR to find their files")
            continue
        try:
            sources += sources_from_request(request, catalog)
        except StackInputError as e:
            problems += e.problems
    if problems:
        raise StackInputError(problems)
    return sources


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LoraStackError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, …)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoraStackError(f"--device {name}: no CUDA GPU is available")
    return device


def _load(args, *, out: str | None = None, force: bool = False):
    """The stack and the base; with ``out``, first refuse an output that is an input or exists (before any work)."""
    sources = _sources(args)
    if out is not None:
        check_output(out, [*([args.base] if args.base else []), *(s.path for s in sources)], force=force)
    family, items = load_stack(sources, args.family)
    base = BaseCheckpoint(args.base) if args.base else None
    return family, items, base


def _run(fn, argv) -> int:
    try:
        return fn(argv)
    except LoraStackError as e:
        problems = getattr(e, "problems", None) or [str(e)]
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        return 2
    except ValueError as e:  # our own argument checks (rank, density, method)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2


def _doctor(argv: list[str]) -> int:
    p = _parser("doctor", "Where the LoRAs of a stack collide, how far the stack moves the model, suggested weights.")
    p.add_argument("--png", metavar="OUT.png", help="write the heatmap (LoRAs × blocks) here")
    p.add_argument("--layers", type=int, default=5, help="how many of the most changed layers to list (text)")
    args = p.parse_args(argv)
    family, items, base = _load(args)
    progress = no_progress if args.quiet else ProgressLine()
    report = diagnose(items, family, base=base, device=_device(args.device), progress=progress)
    png_path = None
    if args.png:
        png_path = Path(args.png)
        if any(it.path and Path(it.path).resolve() == png_path.resolve() for it in items):
            raise LoraStackError(f"--png {png_path} is one of the LoRA files; choose another name")
        png_path.write_bytes(report.png())
    if args.json:
        doc = report.to_dict()
        doc["png"] = str(png_path) if png_path else None
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        print(report.text(layers=args.layers))
        if png_path:
            print(f"\nheatmap: {png_path}")
    return 0


def _bake(argv: list[str]) -> int:
    p = _parser("bake", "Freeze a stack into one LoRA (exact or compressed) or into a checkpoint.")
    p.add_argument("--out", required=True, help="the new .safetensors file")
    p.add_argument(
        "--method",
        choices=["exact", "svd", "checkpoint"],
        default="exact",
        help="exact: ranks concatenated (lossless); svd: summed and compressed to --rank; checkpoint: fused into --base",
    )
    p.add_argument("--rank", type=_positive_int, help="rank of the compressed path (default: the stack's largest)")
    p.add_argument("--dtype", choices=list(_SAVE_DTYPES), default="fp32", help="dtype of the written LoRA factors")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (never an input)")
    args = p.parse_args(argv)
    if args.method == "checkpoint" and not args.base:
        raise LoraStackError("--method checkpoint needs --base CHECKPOINT.safetensors (the model to fuse into)")
    family, items, base = _load(args, out=args.out, force=args.force)
    progress = no_progress if args.quiet else ProgressLine()
    if args.method == "checkpoint":
        assert base is not None
        result = bake_checkpoint(items, base, args.out, family=family, force=args.force, progress=progress)
        doc = {"out": str(result.path), "method": "checkpoint", "changed": len(result.changed), "copied": result.copied}
        text = f"wrote {result.path}: {len(result.changed)} tensors changed, {result.copied} copied unchanged"
    else:
        baked = bake_lora(
            items, family, method=args.method, rank=args.rank, base=base, save_dtype=_SAVE_DTYPES[args.dtype], progress=progress
        )
        out = baked.save(args.out, items, force=args.force, extra_inputs=[args.base] if args.base else [])
        doc, text = _lora_summary(out, baked)
    print(json.dumps(doc, indent=2) if args.json else text)
    return 0


def _lora_summary(out: Path, baked) -> tuple[dict, str]:
    blocks = baked.blocks()
    ranks = sorted(baked.ranks)
    doc = {
        "out": str(out),
        "method": baked.method,
        "layers": len(baked.modules),
        "ranks": ranks,
        "blocks": {b: {"kept": round(v["kept"], 6), "error": round(v["error"], 6)} for b, v in blocks.items()},
        "notes": baked.notes,
    }
    rank_text = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}" if ranks else "-"
    lines = [f"wrote {out}: {len(baked.modules)} layers, {baked.method}, rank {rank_text}"]
    lossy = {b: v for b, v in blocks.items() if v["kept"] < 1 - 1e-9}
    if lossy:
        lines.append("energy kept / relative error per block:")
        lines += [f"  {b:6s} {v['kept']:7.2%}  {v['error']:.4f}" for b, v in blocks.items()]
    else:
        lines.append("exact: every layer's change is the stack's change")
    lines += [f"note: {n}" for n in baked.notes]
    return doc, "\n".join(lines)


def _merge(argv: list[str]) -> int:
    p = _parser("merge", "Merge the LoRAs of a stack (diffusers/PEFT methods) into one LoRA.")
    p.add_argument("--out", required=True, help="the new .safetensors file")
    p.add_argument("--method", choices=list(MERGE_METHODS), default="ties")
    p.add_argument("--density", type=_density, default=0.5, help="share of each change kept (ties, dare, magnitude_prune)")
    p.add_argument("--seed", type=_int, default=0, help="seed of DARE's random masks")
    p.add_argument("--majority-sign", choices=list(SIGN_METHODS), default="total")
    p.add_argument("--rank", type=_positive_int, help="rank of the result (default: the stack's largest)")
    p.add_argument("--dtype", choices=list(_SAVE_DTYPES), default="fp32")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    family, items, base = _load(args, out=args.out, force=args.force)
    progress = no_progress if args.quiet else ProgressLine()
    merged = merge_stack(
        items, family, method=args.method, density=args.density, seed=args.seed, rank=args.rank,
        majority_sign=args.majority_sign, base=base, save_dtype=_SAVE_DTYPES[args.dtype], progress=progress,
    )  # fmt: skip
    out = merged.save(args.out, items, force=args.force, extra_inputs=[args.base] if args.base else [])
    doc, text = _lora_summary(out, merged)
    print(json.dumps(doc, indent=2) if args.json else text)
    return 0


def doctor_main(argv: list[str]) -> int:
    return _run(_doctor, argv)


def bake_main(argv: list[str]) -> int:
    return _run(_bake, argv)


def merge_main(argv: list[str]) -> int:
    return _run(_merge, argv)
