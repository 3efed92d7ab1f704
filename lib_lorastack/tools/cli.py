"""``python -m lib_lorastack …``: the command line."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

INSPECT_EPILOG = """exit status: 0 every file is fine; 1 some file has problems (keys that map to nothing, NaN/Inf,
shape faults) but is usable; 2 some file is unusable (not safetensors, corrupt, no usable key, unsupported model)."""


def _inspect(argv: list[str]) -> int:
    from .examples import ensure_examples
    from .inspect import format_report, inspect_file, report_dict

    parser = argparse.ArgumentParser(
        prog="python -m lib_lorastack inspect",
        description="What LoRA files contain and which layers of the WebUI's model they change.",
        epilog=INSPECT_EPILOG,
    )
    parser.add_argument("files", nargs="*", help="LoRA files (.safetensors); none: the built-in examples")
    parser.add_argument("--json", action="store_true", help="print JSON (one list of reports)")
    parser.add_argument("--family", choices=["sd1", "sd2", "sdxl"], help="the base model (detected when omitted)")
    args = parser.parse_args(argv)
    files = args.files or [str(p) for p in ensure_examples()]
    reports = [inspect_file(f, args.family) for f in files]
    if args.json:
        print(json.dumps([report_dict(r) for r in reports], indent=2, ensure_ascii=False))
    else:
        for r in reports:
            print(format_report(r))
    return max((r.exit_code for r in reports), default=0)


def _doctor_command(name: str):
    def run(argv: list[str]) -> int:
        from ..doctor import cli

        return getattr(cli, f"{name}_main")(argv)

    return run


COMMANDS = {
    "inspect": (_inspect, "what LoRA files contain"),
    "doctor": (_doctor_command("doctor"), "where the LoRAs of a stack collide; suggested weights; heatmap"),
    "bake": (_doctor_command("bake"), "freeze a stack into one LoRA or into a checkpoint"),
    "merge": (_doctor_command("merge"), "merge LoRAs (linear, TIES, DARE, magnitude pruning) into one LoRA"),
    "demo": ("lib_lorastack.tools.demo", "parse a prompt, load the example LoRAs, patch an SD1.5-shaped model"),
    "preset": ("lib_lorastack.presets.cli", "named LoRA stacks: list, show, save, export, import, delete"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m lib_lorastack {" + ",".join(COMMANDS) + "} [options]\n")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:10s} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    target, _ = COMMANDS[argv[0]]
    if isinstance(target, str):
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            if e.name != target:
                raise
            print(f"the {argv[0]!r} command is not available in this install ({target} is missing)", file=sys.stderr)
            return 2
        return module.main(argv[1:])
    return target(argv[1:])
