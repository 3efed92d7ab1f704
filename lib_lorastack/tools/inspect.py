"""What a LoRA file contains and which layers of the WebUI's model it changes."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import LoraFileError
from ..formats.files import LoraFile
from ..formats.hashes import file_hashes
from ..formats.loader import load_lora
from ..formats.targets import FLUX_PREFIX, UNET_PREFIX, Family, Target
from ..syntax.blocks import block_id


@dataclass
class FileReport:
    path: str
    ok: bool = True  # readable and usable
    error: str | None = None
    name: str = ""
    alias: str = ""
    format: str = ""
    family: str = ""
    adapters: dict[str, int] = field(default_factory=dict)
    rank: tuple[int, int] | None = None
    alpha: tuple[float, float] | None = None
    modules: dict[str, int] = field(default_factory=dict)  # model part → modules touched
    blocks: dict[str, int] = field(default_factory=dict)  # block ID → modules touched
    ldm_blocks: dict[str, int] = field(default_factory=dict)  # input_blocks.N / middle_block / … / text encoder → modules
    trigger_words: list[str] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)
    base_model: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 2 if not self.ok else 1 if self.problems else 0


def inspect_file(path: str | Path, family: Family | str | None = None) -> FileReport:
    report = FileReport(path=str(path))
    try:
        f = LoraFile(path)
        parsed = load_lora(path, family)
    except LoraFileError as e:
        report.ok, report.error = False, str(e)
        return report
    report.name, report.alias, report.format = parsed.name, parsed.alias or parsed.name, parsed.format
    report.family = parsed.family.value if parsed.family else ""
    adapters = list({id(a): a for a in parsed.modules.values()}.values())
    report.adapters = dict(Counter(a.label for a in adapters))
    ranks = [a.rank for a in adapters if a.rank is not None]
    alphas = [a.alpha for a in adapters if a.alpha is not None]
    report.rank = (min(ranks), max(ranks)) if ranks else None
    report.alpha = (min(alphas), max(alphas)) if alphas else None
    report.modules = dict(Counter(t.component.value for t in parsed.modules))
    report.blocks = dict(sorted(Counter(block_id(t.module) or "other" for t in parsed.modules).items()))
    report.ldm_blocks = _ldm_blocks(parsed.modules)
    report.trigger_words = f.trigger_words()
    hashes = file_hashes(path)
    report.hashes = {
        "sha256": hashes.sha256,
        "autov2": hashes.autov2,
        "lora_hash": f.metadata.get("sshs_model_hash") or hashes.addnet,
        "lora_short": (f.metadata.get("sshs_model_hash") or hashes.addnet)[:12],
    }
    report.base_model = f.metadata.get("ss_base_model_version", "") or f.metadata.get("modelspec.architecture", "")
    report.problems = list(parsed.problems)
    seen = {p.split(":")[0].split(" → ")[0].removeprefix("module ") for p in parsed.problems}  # already said
    report.problems += [f"{u.key}: {u.reason}" for u in parsed.unmatched if u.key not in seen and "NaN" not in u.reason]
    return report


_TE_NAMES = {"te": "text encoder", "te1": "text encoder 1", "te2": "text encoder 2", "clip_l": "CLIP-L", "t5xxl": "T5-XXL"}


def _ldm_block(target: Target) -> str:
    component = target.component
    if component.is_text_encoder:
        return _TE_NAMES[component.value]
    if target.module.startswith(UNET_PREFIX):
        parts = target.module[len(UNET_PREFIX) :].split(".")
    else:  # Flux: double_blocks.N / single_blocks.N / img_in, final_layer, …
        parts = target.module[len(FLUX_PREFIX) :].split(".")
    return ".".join(parts[:2]) if parts[0] in ("input_blocks", "output_blocks", "double_blocks", "single_blocks") else parts[0]


def _ldm_blocks(targets) -> dict[str, int]:
    counts = Counter(_ldm_block(t) for t in targets)
    order = {"time_embed": 0, "label_emb": 1, "input_blocks": 2, "middle_block": 3, "output_blocks": 4, "out": 5,
             "img_in": 0, "txt_in": 0, "time_in": 0, "vector_in": 0, "guidance_in": 0, "double_blocks": 2,
             "single_blocks": 4, "final_layer": 5}  # fmt: skip

    def key(name: str) -> tuple:
        head, _, n = name.partition(".")
        return (order.get(head, 6), int(n) if n.isdigit() else 0, name)

    return {k: counts[k] for k in sorted(counts, key=key)}


def _range(r) -> str:
    if r is None:
        return "—"
    lo, hi = r
    return f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"


def format_report(r: FileReport) -> str:
    if not r.ok:
        return f"{r.path}\n  UNUSABLE: {r.error}\n"
    lines = [
        r.path,
        f"  name / alias : {r.name}" + (f" / {r.alias}" if r.alias != r.name else ""),
        f"  format       : {r.format}    family: {r.family.upper()}" + (f"  (trained on {r.base_model})" if r.base_model else ""),
        f"  adapters     : {', '.join(f'{k} ×{v}' for k, v in r.adapters.items())}",
        f"  rank / alpha : {_range(r.rank)} / {_range(r.alpha)}",
        f"  touches      : {', '.join(f'{k} {v}' for k, v in sorted(r.modules.items()))} modules",
        f"  blocks       : {' '.join(f'{k}:{v}' for k, v in r.blocks.items())}",
        f"  {'BFL blocks' if r.family == Family.FLUX.value else 'LDM blocks'}   : "
        + ", ".join(f"{k} {v}" for k, v in r.ldm_blocks.items()),
        f"  triggers     : {', '.join(r.trigger_words) or '—'}",
        f"  hashes       : lora {r.hashes['lora_short']}  sha256 {r.hashes['autov2']} ({r.hashes['sha256']})",
    ]
    if r.problems:
        lines.append(f"  problems ({len(r.problems)}):")
        lines += [f"    - {p}" for p in r.problems[:20]]
        if len(r.problems) > 20:
            lines.append(f"    … and {len(r.problems) - 20} more (--json lists all)")
    else:
        lines.append("  problems     : none")
    return "\n".join(lines) + "\n"


def report_dict(r: FileReport) -> dict:
    d = asdict(r)
    d["exit_code"] = r.exit_code
    return d
