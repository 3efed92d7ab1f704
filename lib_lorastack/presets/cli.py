"""``python -m lib_lorastack preset list|show|save|export|import|delete|expand|restore|reset``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import PresetError
from .store import MAX_FILE_BYTES, PresetStore, atomic_write, default_store_path, encode_document

EPILOG = """The store is one JSON file: --store, else $LORASTACK_PRESETS, else ~/.config/lorastack/presets.json.
Exit status: 0 done; 1 the request failed (message on stderr); 2 bad command line."""


def _store(args: argparse.Namespace) -> PresetStore:
    return PresetStore(Path(args.store).expanduser() if args.store else default_store_path())


def _resolver(args: argparse.Namespace):
    if not getattr(args, "lora_dir", None):
        return None
    from ..formats.hashes import HashCache
    from ..stack.catalog import LoraCatalog
    from .resolve import LoraResolver

    for d in args.lora_dir:
        if not Path(d).is_dir():
            raise PresetError(f"--lora-dir {d}: not a folder")
    return LoraResolver(LoraCatalog(*args.lora_dir), HashCache(args.hash_cache) if args.hash_cache else None)


def _read_input(path: str, what: str) -> bytes:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PresetError(f"{path}: {size} bytes; a {what} may have at most {MAX_FILE_BYTES}")
        return p.read_bytes()
    except OSError as e:
        raise PresetError(f"{path}: cannot be read ({e.strerror or e})") from None


def _text(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PresetError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None


def _warn(lines) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _cmd_list(args: argparse.Namespace) -> int:
    from .api import list_presets

    status, body = list_presets(_store(args))
    if status != 200:
        raise PresetError(body["error"])
    if args.json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return 0
    if not body["presets"]:
        print(f"no presets in {_store(args).path}")
    for p in body["presets"]:
        family = f" [{p['family']}]" if p["family"] else ""
        desc = f" — {p['description']}" if p["description"] else ""
        print(f"{p['name']}{family}: {', '.join(p['loras'])}{desc}")
    if body["block_presets"]:
        print(f"block presets: {', '.join(body['block_presets'])}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from ..syntax.format import format_entry
    from .validate import preset_to_json

    preset = _store(args).get(args.name)
    if args.json:
        print(json.dumps(preset_to_json(preset), indent=2, ensure_ascii=False))
        return 0
    print(f"{preset.name}" + (f" — {preset.description}" if preset.description else ""))
    print(f"  family: {preset.family or 'any'}   scale: {preset.scale:g}   updated: {preset.updated}")
    for e in preset.entries:
        ident = f"  sha256 {e.sha256[:12]}…" if e.sha256 else "  (no hash)"
        state = "" if e.enabled else "  [off]"
        print(f"  {format_entry(e.to_stack_entry(e.name))}  {e.file or ''}{ident}{state}")
    if preset.triggers:
        print(f"  triggers: {preset.triggers}")
    if preset.negative_triggers:
        print(f"  negative: {preset.negative_triggers}")
    return 0


def _cmd_save(args: argparse.Namespace) -> int:
    from .imports import preset_from_prompt

    store = _store(args)
    preset, messages = preset_from_prompt(
        args.name, args.prompt, args.negative or "", description=args.description or "", family=args.family,
        scale=args.scale, resolver=_resolver(args), block_presets=store.load().block_presets,
    )  # fmt: skip
    _warn(messages)
    stored = store.save(preset, overwrite=args.overwrite)
    print(f"saved {stored.name!r}: {len(stored.entries)} LoRA(s) in {store.path}")
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    store = _store(args)
    for name in args.names:
        store.delete(name)
        print(f"deleted {name!r}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .imports import export_document

    doc = export_document(_store(args).load(), args.names)
    data = encode_document(doc)
    if args.output == "-":
        sys.stdout.write(data.decode("utf-8"))
    else:
        atomic_write(Path(args.output), data)
        print(f"exported {len(doc.presets)} preset(s) to {args.output}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from .imports import merge_into, read_lbw_presets, read_preset_file, read_styles_csv

    mode = "overwrite" if args.overwrite else "rename" if args.rename_on_conflict else "refuse"
    sources = [s for s in (args.file, args.styles, args.lbw) if s]
    if len(sources) != 1:
        raise PresetError("give one of: FILE (a lorastack export), --styles styles.csv, --lbw lbwpresets.txt")
    store = _store(args)
    presets, blocks, problems = [], {}, []
    if args.file:
        doc = read_preset_file(_read_input(args.file, "preset file"), source=args.file)
        presets, blocks = list(doc.presets.values()), doc.block_presets
    elif args.styles:
        presets, problems = read_styles_csv(
            _text(_read_input(args.styles, "styles file"), args.styles), source=args.styles, resolver=_resolver(args),
            family=args.family,
        )  # fmt: skip
    else:
        blocks, problems = read_lbw_presets(_text(_read_input(args.lbw, "preset file"), args.lbw), source=args.lbw)
    for p in problems:
        if p.severity != "info" or args.verbose:
            print(f"{p.severity}: {p}", file=sys.stderr)
    if not presets and not blocks:
        raise PresetError("nothing to import")
    report = store.update(lambda d: merge_into(d, presets, blocks, mode=mode))
    for line in report.lines():
        print(line)
    return 0


def _cmd_expand(args: argparse.Namespace) -> int:
    from .expand import expand_prompt

    result = expand_prompt(
        args.prompt, args.negative or "", presets=_store(args).load(), add_triggers=args.triggers,
        resolver=_resolver(args), family=args.family,
    )  # fmt: skip
    for d in result.diagnostics:
        print(f"{d.severity}: {d.message}", file=sys.stderr)
    if args.json:
        from .api import diagnostic_json, entry_json

        out = {
            "prompt": result.prompt,
            "negative_prompt": result.negative,
            "entries": [entry_json(e) for e in result.entries],
            "diagnostics": [diagnostic_json(d) for d in result.diagnostics],
        }
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(result.prompt)
        if result.negative:
            print(f"negative: {result.negative}")
    return 1 if result.errors else 0


def _cmd_restore(args: argparse.Namespace) -> int:
    store = _store(args)
    aside = store.restore_backup()
    print(f"restored {store.backup_path} to {store.path}" + (f"; the replaced file is kept as {aside}" if aside else ""))
    return 0


def _cmd_reset(args: argparse.Namespace) -> int:
    if not args.yes:
        raise PresetError("reset starts an empty store; pass --yes (the current file is kept aside, not deleted)")
    aside = _store(args).reset()
    print("the store is empty" + (f"; the previous file is kept as {aside}" if aside else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lib_lorastack preset", description="Named LoRA stacks (presets).", epilog=EPILOG
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", help="the preset file (JSON)")
    files = argparse.ArgumentParser(add_help=False)
    files.add_argument("--lora-dir", action="append", help="a LoRA folder (repeatable): record/find files by hash")
    files.add_argument("--hash-cache", help="a JSON file that keeps file hashes between runs")
    files.add_argument("--family", choices=["sd1", "sd2", "sdxl"], help="the base model family")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", parents=[common], help="the presets in the store")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_cmd_list)

    p = sub.add_parser("show", parents=[common], help="one preset in full")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_cmd_show)

    p = sub.add_parser("save", parents=[common, files], help="save a preset from <lora:…> tags and trigger words")
    p.add_argument("name")
    p.add_argument("--prompt", required=True, help="<lora:…> tags; the other words are the trigger words")
    p.add_argument("--negative", help="negative trigger words")
    p.add_argument("--description")
    p.add_argument("--scale", type=float, default=1.0, help="overall scale of every strength (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace a preset with the same name")
    p.set_defaults(run=_cmd_save)

    p = sub.add_parser("delete", parents=[common], help="delete presets")
    p.add_argument("names", nargs="+")
    p.set_defaults(run=_cmd_delete)

    p = sub.add_parser("export", parents=[common], help="write presets to a file to share")
    p.add_argument("names", nargs="+")
    p.add_argument("-o", "--output", required=True, help="the file to write ('-': standard output)")
    p.set_defaults(run=_cmd_export)

    p = sub.add_parser("import", parents=[common, files], help="import an export file, styles.csv or lbwpresets.txt")
    p.add_argument("file", nargs="?", help="a lorastack export file")
    p.add_argument("--styles", help="the WebUI's styles.csv: styles with <lora:…> tags become presets")
    p.add_argument("--lbw", help="lora-block-weight's lbwpresets.txt: block presets")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--rename-on-conflict", action="store_true", help="store a clashing preset as 'NAME (2)'")
    how.add_argument("--overwrite", action="store_true", help="replace clashing presets")
    p.add_argument("-v", "--verbose", action="store_true", help="also list skipped styles")
    p.set_defaults(run=_cmd_import)

    p = sub.add_parser("expand", parents=[common, files], help="a prompt with <lorastack:NAME[:SCALE]> expanded")
    p.add_argument("prompt")
    p.add_argument("--negative")
    p.add_argument("--triggers", action="store_true", help="add the presets' trigger words")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_cmd_expand)

    p = sub.add_parser("restore", parents=[common], help="put the backup (<store>.bak) back")
    p.set_defaults(run=_cmd_restore)

    p = sub.add_parser("reset", parents=[common], help="start an empty store (the old file is kept aside)")
    p.add_argument("--yes", action="store_true")
    p.set_defaults(run=_cmd_reset)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        return args.run(args)
    except PresetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
