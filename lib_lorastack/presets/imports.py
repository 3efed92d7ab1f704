"""Bringing stacks in: from a prompt with ``<lora:…>`` tags, from the WebUI's ``styles.csv``, from
lora-block-weight's ``lbwpresets.txt``, and from lorastack export files; merging them into a store document."""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from ..syntax.lbw import read_presets
from ..syntax.parse import parse_prompt
from ..syntax.tags import LORA_TAGS, find_tags, strip_tags
from .errors import PresetConflictError, PresetImportError, PresetNotFoundError, PresetSchemaError
from .model import Preset, PresetDocument, PresetEntry
from .store import MAX_FILE_BYTES, parse_json_bytes, suggest
from .validate import (
    MAX_NAME,
    NewerSchemaError,
    block_preset_name_fault,
    block_vector,
    check_preset,
    document_from_json,
)

if TYPE_CHECKING:
    from .resolve import LoraResolver

ConflictMode = Literal["refuse", "rename", "overwrite"]


@dataclass(frozen=True)
class ImportProblem:
    """Something an import skipped or changed. ``where``: the file and line/style/preset."""

    where: str
    message: str
    severity: Literal["error", "warning", "info"] = "warning"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


# ---- prompt → preset ----


def clean_words(text: str) -> str:
    """Prompt text left after the tags are removed, tidied: no ``{prompt}`` placeholder (a WebUI style's slot for
    the user's prompt), single spaces, no empty comma items."""
    text = text.replace("{prompt}", " ")
    items = [" ".join(part.split()) for part in text.split(",")]
    return ", ".join(i for i in items if i)


def preset_from_prompt(
    name: str,
    prompt: str,
    negative: str = "",
    *,
    description: str = "",
    family: str | None = None,
    scale: float = 1.0,
    resolver: LoraResolver | None = None,
    block_presets: Mapping[str, str] | None = None,
) -> tuple[Preset, list[str]]:
    """A preset from the LoRA tags of ``prompt`` (their weights and block arguments); the other words become the
    trigger words, those of ``negative`` the negative ones. With a ``resolver`` each LoRA's hash, file name and alias
    are recorded. ``block_presets``: the store's, so that ``lbw=NAME`` of one of them is known. Returns the preset
    (checked) and messages; ``PresetSchemaError`` when it cannot be a preset."""
    request = parse_prompt(prompt, presets=block_presets)
    messages = [d.message for d in request.diagnostics if d.severity != "info"]
    others = sorted({t.kind for t in find_tags(prompt) if t.kind not in LORA_TAGS})
    if others:
        messages.append(f"tags other than <lora:…> are not kept: {', '.join('<' + k + ':…>' for k in others)}")
    if not request.entries:
        why = "; ".join(d.message for d in request.errors)
        raise PresetSchemaError(f"preset {name!r}", "the prompt has no usable <lora:…> tag" + (f" ({why})" if why else ""))
    entries = []
    for e in request.entries:
        entry = PresetEntry.from_stack_entry(e)
        if resolver is not None:
            entry, problem = resolver.pin(entry)
            if problem:
                messages.append(problem)
        entries.append(entry)
    preset = Preset(
        name=name,
        entries=tuple(entries),
        description=description,
        triggers=clean_words(strip_tags(prompt)),
        negative_triggers=clean_words(strip_tags(negative)),
        scale=scale,
        family=family,
    )
    return check_preset(preset), messages


# ---- styles.csv ----


def sanitize_name(name: str) -> str:
    """A usable preset name close to ``name``: forbidden characters → ``-``, invisible ones dropped, trimmed."""
    out = []
    for ch in name:
        if ch in ':<>/\\':
            out.append("-")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(" " if ch in "\t\n\r" else "")
        else:
            out.append(ch)
    text = " ".join("".join(out).split())[:MAX_NAME].strip()
    if set(text) <= {"."}:
        text = ""
    return text


def _unique(name: str, taken: Iterable[str]) -> str:
    taken = set(taken)
    return name if name not in taken else _numbered(name, taken, " ({})")


def _numbered(name: str, taken, suffix_format: str) -> str:
    """``name`` with the first free number (from 2) appended, cut to fit the name limit."""
    n = 2
    while True:
        suffix = suffix_format.format(n)
        candidate = name[: MAX_NAME - len(suffix)].rstrip() + suffix
        if candidate not in taken:
            return candidate
        n += 1


def read_styles_csv(
    text: str,
    *,
    source: str = "styles.csv",
    resolver: LoraResolver | None = None,
    family: str | None = None,
) -> tuple[list[Preset], list[ImportProblem]]:
    """Presets from a WebUI ``styles.csv`` (header ``name,prompt,negative_prompt``): one per style whose prompt has
    at least one ``<lora:…>`` tag. Weights and block arguments are kept; the other prompt words become trigger words
    and the negative prompt's words negative trigger words."""
    problems: list[ImportProblem] = []
    text = text.lstrip("\ufeff")
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames or []
        rows = []
        start = reader.line_num + 1
        for row in reader:
            rows.append((start, row))  # the line the style starts on (a prompt may hold line breaks)
            start = reader.line_num + 1
    except csv.Error as e:
        raise PresetImportError(source, f"line {reader.line_num}: not readable as CSV ({e})") from None
    if "name" not in header or "prompt" not in header:
        raise PresetImportError(source, f"has no 'name' and 'prompt' columns (header: {header[:5]}); is it the WebUI's styles.csv?")
    presets: list[Preset] = []
    # A name changed to fit must not take the name of another style of the file.
    taken: set[str] = {(row.get("name") or "").strip() for _, row in rows}
    used: set[str] = set()
    for line, row in rows:
        raw_name = (row.get("name") or "").strip()
        prompt = row.get("prompt") or ""
        negative = row.get("negative_prompt") or ""
        where = f"{source} line {line} (style {raw_name!r})"
        if not raw_name:
            continue
        if not any(t.kind in LORA_TAGS for t in find_tags(prompt)):
            problems.append(ImportProblem(where, "no <lora:…> tag: not a stack, skipped", "info"))
            continue
        name = sanitize_name(raw_name)
        if not name:
            problems.append(ImportProblem(where, "the name has no usable character; skipped", "error"))
            continue
        unique = _unique(name, used if name == raw_name else used | taken)
        if unique != raw_name:
            problems.append(ImportProblem(where, f"imported as {unique!r} (preset names cannot hold : < > / \\ or repeat)"))
        try:
            preset, messages = preset_from_prompt(
                unique, prompt, negative, description=f"from {source}, style {raw_name!r}", family=family, resolver=resolver
            )
        except PresetSchemaError as e:
            problems.append(ImportProblem(where, f"{e}; skipped", "error"))
            continue
        problems += [ImportProblem(where, m) for m in messages]
        presets.append(preset)
        used.add(unique)
    return presets, problems


# ---- lbwpresets.txt ----


def read_lbw_presets(text: str, *, source: str = "lbwpresets.txt") -> tuple[dict[str, str], list[ImportProblem]]:
    """Block presets (NAME -> vector) from lora-block-weight's preset file; lines LBW would ignore are reported."""
    found, file_problems = read_presets(text)
    problems = [ImportProblem(f"{source} line {p.line}", f"{p.reason}; skipped") for p in file_problems]
    lines = {}
    for number, line in enumerate(text.splitlines(), 1):
        if ":" in line:
            lines.setdefault(line.split(":", 1)[0].strip(), number)
    out: dict[str, str] = {}
    for name, vector in found.items():
        where = f"{source} line {lines.get(name, '?')} ({name!r})"
        fault = block_preset_name_fault(name)
        if fault:
            problems.append(ImportProblem(where, f"{fault}; skipped", "error"))
            continue
        try:
            out[name] = block_vector(vector.strip(), "vector")
        except PresetSchemaError as e:
            problems.append(ImportProblem(where, f"{e}; skipped", "error"))
    return out, problems


# ---- export files ----


def read_preset_file(data: bytes, *, source: str = "preset file", max_bytes: int = MAX_FILE_BYTES) -> PresetDocument:
    """An export (or store) file offered for import, checked in full: any fault refuses the whole file."""
    try:
        return document_from_json(parse_json_bytes(data, max_bytes))
    except NewerSchemaError as e:
        raise PresetImportError(source, f"{e.fault}; update lorastack to import it") from None
    except PresetSchemaError as e:
        raise PresetImportError(source, f"does not follow the preset schema: {e}") from None
    except ValueError as e:
        raise PresetImportError(source, str(e)) from None


def export_document(doc: PresetDocument, names: Iterable[str]) -> PresetDocument:
    """The named presets and the block presets they use, as a document to write to an export file."""
    out = PresetDocument()
    for name in names:
        if name not in doc.presets:
            raise PresetNotFoundError(name, suggest(name, doc.presets))
        preset = doc.presets[name]
        out.presets[name] = preset
        for e in preset.entries:
            if e.lbw in doc.block_presets:
                out.block_presets[e.lbw] = doc.block_presets[e.lbw]
    return out


# ---- merging ----


@dataclass
class MergeReport:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # incoming name -> stored name
    unchanged: list[str] = field(default_factory=list)
    block_presets: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        if self.added:
            out.append(f"added {len(self.added)}: {', '.join(self.added)}")
        if self.replaced:
            out.append(f"replaced {len(self.replaced)}: {', '.join(self.replaced)}")
        out += [f"{old!r} imported as {new!r} (the name was taken)" for old, new in self.renamed.items()]
        if self.unchanged:
            out.append(f"already present, unchanged: {', '.join(self.unchanged)}")
        if self.block_presets:
            out.append(f"block presets: {', '.join(self.block_presets)}")
        return out


def merge_into(
    doc: PresetDocument,
    presets: Iterable[Preset],
    block_presets: dict[str, str] | None = None,
    *,
    mode: ConflictMode = "refuse",
) -> MergeReport:
    """Add ``presets`` (and ``block_presets``) to ``doc`` in place. A name that exists with other content is a
    conflict: ``refuse`` raises ``PresetConflictError`` naming every one and changes nothing; ``rename`` stores the
    newcomer as ``NAME (2)`` (block presets too, and the presets that use them follow); ``overwrite`` replaces it."""
    presets = list(presets)
    block_presets = dict(block_presets or {})
    report = MergeReport()
    clashes = [p.name for p in presets if p.name in doc.presets and not doc.presets[p.name].content_equal(p)]
    block_clashes = [n for n, v in block_presets.items() if n in doc.block_presets and doc.block_presets[n] != v]
    if mode == "refuse" and (clashes or block_clashes):
        names = clashes + [f"block preset {n}" for n in block_clashes]
        raise PresetConflictError(
            clashes + block_clashes,
            f"already present with other content: {', '.join(names)}; import with rename-on-conflict or overwrite",
        )
    block_names: dict[str, str] = {}
    for name, vector in block_presets.items():
        target = name
        if name in block_clashes and mode == "rename":
            target = _unique_block(name, doc.block_presets)
        block_names[name] = target
        if doc.block_presets.get(target) != vector:
            doc.block_presets[target] = vector
            report.block_presets.append(target)
    for preset in presets:
        if block_names and any(e.lbw in block_names and block_names[e.lbw] != e.lbw for e in preset.entries):
            entries = tuple(replace(e, lbw=block_names.get(e.lbw, e.lbw)) if e.lbw else e for e in preset.entries)
            preset = replace(preset, entries=entries)
        existing = doc.presets.get(preset.name)
        if existing is None:
            doc.presets[preset.name] = preset
            report.added.append(preset.name)
        elif existing.content_equal(preset):
            report.unchanged.append(preset.name)
        elif mode == "overwrite":
            doc.presets[preset.name] = preset
            report.replaced.append(preset.name)
        else:
            new = _unique(preset.name, doc.presets)
            doc.presets[new] = replace(preset, name=new)
            report.renamed[preset.name] = new
    return report


def _unique_block(name: str, taken: dict[str, str]) -> str:
    return _numbered(name, taken, "_{}")


