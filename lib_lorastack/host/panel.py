"""The stack panel's model, host-free: rows, their JSON (the panel's state and the API argument), keeping rows in
sync with the prompt's tags, and what the rows add to a job.

A row is either **in the prompt** (it mirrors a ``<lora:…>`` tag: editing the row rewrites that tag, deleting the
tag removes the row) or **panel-only** (it applies without touching the prompt). When a LoRA is both in a panel-only
row and in the prompt, the prompt's tag wins.

Rows are kept in the order they are stacked (the summary's, the infotext's, a saved preset's): the prompt's tags in
the prompt's order first, then the panel's own rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

from ..schedule import never_active
from ..syntax import StackEntry, parse_prompt
from ..syntax.format import format_number
from ..syntax.lbw import DEFAULT_PRESETS, spec_fault
from ..syntax.rewrite import add_lora_tag, remove_lora_tags
from ..syntax.tags import TAG_RE

MAX_ROWS = 64
MAX_STATE_CHARS = 65536
STRENGTH_LIMIT = 100.0
ROW_FIELDS = ("lora", "te", "unet", "linked", "lbw", "start", "stop", "enabled", "in_prompt")
MODES = ("auto", "fused", "online")


@dataclass(frozen=True)
class Row:
    lora: str = ""
    te: float = 1.0
    unet: float = 1.0
    linked: bool = True  # TE follows UNet (and back) while they are equal
    lbw: str = ""  # a block-weight preset name or vector ("" = every block at 1)
    start: int | None = None
    stop: int | None = None
    enabled: bool = True
    in_prompt: bool = False

    def entry(self, multiplier: float = 1.0) -> StackEntry:
        return StackEntry(self.lora, self.te * multiplier, self.unet * multiplier, lbw=self.lbw or None, start=self.start, stop=self.stop)

    def tag_items(self, multiplier: float = 1.0) -> list[str]:
        """The row as the WebUI splits a tag's arguments (what the tag handler gets)."""
        e = self.entry(multiplier)
        items = [e.name, format_number(e.te)]
        if e.unet != e.te:
            items.append(format_number(e.unet))
        items += [f"{k}={v}" for k, v in (("lbw", e.lbw), ("start", e.start), ("stop", e.stop)) if v is not None]
        return items


@dataclass(frozen=True)
class PanelState:
    rows: tuple[Row, ...] = ()
    multiplier: float = 1.0
    mode: str | None = None  # overrides the setting for one job (the XYZ plot's "stack mode" axis)

    def to_json(self) -> str:
        data: dict = {"rows": [asdict(r) for r in self.rows], "multiplier": self.multiplier}
        if self.mode is not None:
            data["mode"] = self.mode
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Parsed:
    state: PanelState
    problems: list[str] = field(default_factory=list)


def parse_state(value: object, presets: Mapping[str, str] | None = None) -> Parsed:
    """The panel's state from JSON text or an already-decoded object (the API's ``alwayson_scripts`` argument):
    ``{"rows": [{"lora": "name", "te": 0.8, "unet": 0.8, "lbw": "OUTALL", "start": 0, "stop": 20, "enabled": true,
    "in_prompt": false}, …], "multiplier": 1.0, "mode": "fused"}`` or just the list of rows. A row that does not fit
    the schema is left out with a message naming the row, the field and the fault; the rest stays."""
    problems: list[str] = []
    if value is None or value == "":
        return Parsed(PanelState())
    if isinstance(value, str):
        if len(value) > MAX_STATE_CHARS:
            return Parsed(PanelState(), [f"LoRA Stack argument: {len(value)} characters (more than {MAX_STATE_CHARS})"])
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            return Parsed(PanelState(), [f"LoRA Stack argument: not JSON ({e.msg} at line {e.lineno} column {e.colno})"])
    if isinstance(value, list):
        value = {"rows": value}
    if not isinstance(value, dict):
        return Parsed(PanelState(), [f"LoRA Stack argument: expected an object with 'rows', got {type(value).__name__}"])
    unknown = sorted(set(value) - {"rows", "multiplier", "mode", "at"})  # "at": when the panel wrote it (UI only)
    if unknown:
        problems.append(f"LoRA Stack argument: unknown key(s) {', '.join(map(repr, unknown))} ignored")
    multiplier, fault = _number(value.get("multiplier", 1.0))
    if fault:
        problems.append(f"LoRA Stack argument: multiplier {fault}; using 1")
        multiplier = 1.0
    mode = value.get("mode")
    if mode is not None and mode not in MODES:
        problems.append(f"LoRA Stack argument: mode {mode!r} is not one of {', '.join(MODES)}; the setting is used")
        mode = None
    raw_rows = value.get("rows", [])
    if not isinstance(raw_rows, list):
        problems.append("LoRA Stack argument: 'rows' must be a list")
        raw_rows = []
    if len(raw_rows) > MAX_ROWS:
        problems.append(f"LoRA Stack argument: {len(raw_rows)} rows, only the first {MAX_ROWS} are used")
        raw_rows = raw_rows[:MAX_ROWS]
    rows = []
    for i, raw in enumerate(raw_rows, 1):
        row, fault = parse_row(raw, presets)
        if fault:
            problems.append(f"LoRA Stack row {i}: {fault}; row ignored")
        else:
            rows.append(row)
    return Parsed(PanelState(tuple(rows), multiplier, mode), problems)


def parse_row(raw: object, presets: Mapping[str, str] | None = None) -> tuple[Row, str | None]:
    if not isinstance(raw, dict):
        return Row(), f"expected an object, got {type(raw).__name__}"
    raw = dict(raw)
    if "name" in raw and "lora" not in raw:
        raw["lora"] = raw.pop("name")
    unknown = sorted(set(raw) - set(ROW_FIELDS))
    if unknown:
        return Row(), f"unknown field(s) {', '.join(map(repr, unknown))}"
    name = raw.get("lora", "")
    if not isinstance(name, str) or any(c in name for c in ":<>\n") or len(name) > 255:
        return Row(), f"lora {str(name)[:40]!r} is not a LoRA name (text without ':', '<', '>', at most 255 characters)"
    values: dict = {"lora": name.strip() if name.strip() == name else name}
    for key in ("te", "unet"):
        if key in raw:
            number, fault = _number(raw[key])
            if fault:
                return Row(), f"{key} {fault}"
            values[key] = number
    if "te" in raw and "unet" not in raw:
        values["unet"] = values["te"]
    if "unet" in raw and "te" not in raw:
        values["te"] = values["unet"]
    for key in ("linked", "enabled", "in_prompt"):
        if key in raw:
            if not isinstance(raw[key], bool):
                return Row(), f"{key} must be true or false, not {raw[key]!r}"
            values[key] = raw[key]
    lbw = raw.get("lbw") or ""
    if not isinstance(lbw, str):
        return Row(), f"lbw must be a preset name or a comma-separated vector, not {lbw!r}"
    if lbw:
        fault = spec_fault(lbw, {**DEFAULT_PRESETS, **(presets or {})})
        if fault:
            return Row(), f"lbw: {fault}"
    values["lbw"] = lbw
    for key in ("start", "stop"):
        v = raw.get(key)
        if v is None or v == "":
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v) or v < 0:
            return Row(), f"{key} must be a whole number of steps ≥ 0, not {v!r}"
        values[key] = int(v)
    if never_active(values.get("start"), values.get("stop")):
        return Row(), f"stop {values['stop']} must be after start {max(values.get('start') or 1, 1)} (steps count from 1)"
    return Row(**values), None


def _number(value: object) -> tuple[float, str | None]:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0.0, f"{value!r} is not a number"
    try:
        number = float(value)
    except ValueError:
        return 0.0, f"{value!r} is not a number"
    if not math.isfinite(number) or abs(number) > STRENGTH_LIMIT:
        return 0.0, f"{value!r} is not a number between -{STRENGTH_LIMIT:g} and {STRENGTH_LIMIT:g}"
    return number, None


# --------------------------------------------------------------------- in sync with the prompt
def prompt_rows(prompt: str, presets: Mapping[str, str] | None = None) -> list[Row]:
    """The prompt's tags as rows (the WebUI's order; a tag that does not parse is not a row)."""
    rows = []
    for e in parse_prompt(prompt, presets=presets).entries:
        rows.append(Row(e.name, e.te, e.unet, e.te == e.unet, e.lbw or "", e.start, e.stop, True, True))
    return rows


def sync_with_prompt(state: PanelState, prompt: str, presets: Mapping[str, str] | None = None) -> PanelState:
    """Rows in the prompt follow its tags: a changed tag updates its row, a deleted tag removes its row, a new tag
    adds a row. The rows come out in stack order: the prompt's tags in the prompt's order, then the prompt rows
    switched off (their tag is out of the prompt until they are on again), then the panel-only rows as they were."""
    tags = prompt_rows(prompt, presets)
    old = {}
    for row in state.rows:
        if row.in_prompt and row.lora not in old:
            old[row.lora] = row
    by_tag = [replace(t, linked=old[t.lora].linked and t.te == t.unet) if t.lora in old else t for t in tags]
    named = {t.lora for t in tags}
    off = [r for r in state.rows if r.in_prompt and not r.enabled and r.lora not in named]
    panel_only = [r for r in state.rows if not r.in_prompt]
    return replace(state, rows=(*by_tag, *off, *panel_only))


def move_in_stack(state: PanelState, prompt: str, index: int, delta: int) -> tuple[PanelState, str, str | None]:
    """Move a row up or down the stack: panel-only rows among themselves, prompt rows by swapping their tags in the
    prompt (the prompt's order is the stack's). Returns the state, the prompt and a note when it cannot move."""
    rows = list(state.rows)
    to = index + delta
    if not (0 <= index < len(rows) and 0 <= to < len(rows)):
        return state, prompt, None
    a, b = rows[index], rows[to]
    tagged = lambda r: r.in_prompt and r.enabled  # noqa: E731
    if tagged(a) != tagged(b) or a.in_prompt != b.in_prompt:
        return state, prompt, f"row {index + 1}: the prompt's tags come first in the stack, then the panel's own rows"
    if tagged(a):
        spans = {e.name: e.span for e in parse_prompt(prompt).entries}
        sa, sb = spans.get(a.lora), spans.get(b.lora)
        if sa is None or sb is None:
            return state, prompt, None
        (s1, e1), (s2, e2) = sorted((sa, sb))
        prompt = prompt[:s1] + prompt[s2:e2] + prompt[e1:s2] + prompt[s1:e1] + prompt[e2:]
        return sync_with_prompt(state, prompt), prompt, None
    rows[index], rows[to] = b, a
    return replace(state, rows=tuple(rows)), prompt, None


def prompt_problems(prompt: str, presets: Mapping[str, str] | None = None) -> list[str]:
    """What the job would report about the prompt's LoRA tags, worded as the job words it (the tag, then the
    fault): a bad number, an unknown block preset, a schedule that never runs…"""
    tags = [(m.start(), m.end()) for m in TAG_RE.finditer(prompt)]
    out = []
    for d in parse_prompt(prompt, presets=presets).diagnostics:
        where = next((prompt[s:e] for s, e in tags if s <= d.span[0] < e), "")
        line = f"{where}: {d.message}" if where else d.message
        if line not in out:
            out.append(line)
    return out


def edit_row(state: PanelState, prompt: str, index: int, presets: Mapping[str, str] | None = None, **changes) -> tuple[PanelState, str]:
    """Change one row; a row in the prompt rewrites its tag there (only that tag changes). ``te``/``unet`` move
    together while the row is linked."""
    rows = list(state.rows)
    if not 0 <= index < len(rows):
        return state, prompt
    row = rows[index]
    unknown = set(changes) - set(ROW_FIELDS)
    if unknown:
        raise TypeError(f"unknown row field(s): {sorted(unknown)}")
    linked = changes.get("linked", row.linked)
    if linked and "te" in changes and "unet" not in changes:
        changes["unet"] = changes["te"]
    elif linked and "unet" in changes and "te" not in changes:
        changes["te"] = changes["unet"]
    new = replace(row, **changes)
    if changes.get("linked") and not row.linked:
        new = replace(new, te=new.unet)
    if new.in_prompt and new.lora:
        if row.lora and row.lora != new.lora:
            prompt = remove_lora_tags(prompt, row.lora).text
        if new.enabled:
            prompt = add_lora_tag(prompt, new.entry(), presets=presets).text
        else:
            prompt = remove_lora_tags(prompt, new.lora).text
    rows[index] = new
    return replace(state, rows=tuple(rows)), prompt


def set_in_prompt(state: PanelState, prompt: str, index: int, in_prompt: bool) -> tuple[PanelState, str]:
    """Move a row into the prompt as a tag, or out of it (the tag goes, the row stays, panel-only)."""
    rows = list(state.rows)
    if not 0 <= index < len(rows) or not rows[index].lora:
        return state, prompt
    row = rows[index]
    if in_prompt:
        prompt = add_lora_tag(prompt, row.entry()).text
    else:
        prompt = remove_lora_tags(prompt, row.lora).text
    rows[index] = replace(row, in_prompt=in_prompt, enabled=True if in_prompt else row.enabled)
    return replace(state, rows=tuple(rows)), prompt


def remove_row(state: PanelState, prompt: str, index: int) -> tuple[PanelState, str]:
    rows = list(state.rows)
    if not 0 <= index < len(rows):
        return state, prompt
    row = rows.pop(index)
    if row.in_prompt and row.lora:
        prompt = remove_lora_tags(prompt, row.lora).text
    return replace(state, rows=tuple(rows)), prompt


def move_row(state: PanelState, index: int, delta: int) -> PanelState:
    rows = list(state.rows)
    to = index + delta
    if not (0 <= index < len(rows) and 0 <= to < len(rows)):
        return state
    rows[index], rows[to] = rows[to], rows[index]
    return replace(state, rows=tuple(rows))


def add_row(state: PanelState, lora: str = "", te: float = 1.0, limit: int = MAX_ROWS) -> PanelState:
    if len(state.rows) >= limit:
        return state
    return replace(state, rows=(*state.rows, Row(lora, te, te)))


# --------------------------------------------------------------------- what a job gets
def panel_tags(state: PanelState, prompt: str) -> tuple[list[list[str]], list[str]]:
    """The panel-only rows a job adds (enabled, named, not also in the prompt) as tag argument lists, and a note
    for each row the prompt's own tag overrides."""
    in_prompt = {e.name for e in parse_prompt(prompt).entries}
    tags: list[list[str]] = []
    notes: list[str] = []
    for row in state.rows:
        if row.in_prompt or not row.enabled or not row.lora:
            continue
        if row.lora in in_prompt:
            notes.append(f"{row.lora}: the prompt's tag is used; the panel row is ignored")
            continue
        tags.append(row.tag_items())
    return tags, notes


def summary(
    state: PanelState,
    prompt: str,
    *,
    known: Sequence[str] | None = None,
    wrong_family: Sequence[str] = (),
    budget: float = 3.0,
    expanded: str | None = None,
    presets: Mapping[str, str] | None = None,
) -> list[str]:
    """Lines for the summary under the panel: the resolved stack, then warnings. ``expanded``: the prompt with its
    ``<lorastack:NAME>`` tags replaced as the job replaces them (their LoRAs are marked "(preset)")."""
    job_prompt = prompt if expanded is None else expanded
    typed = {e.name for e in parse_prompt(prompt).entries}
    entries = list(parse_prompt(job_prompt, presets=presets).entries)
    tags, notes = panel_tags(state, job_prompt)
    panel_entries = [parse_prompt(f"<lora:{':'.join(t)}>").entries[0] for t in tags]
    stack = [(e, "prompt" if e.name in typed else "preset") for e in entries] + [(e, "panel") for e in panel_entries]
    m = state.multiplier
    problems = prompt_problems(job_prompt, presets)
    if not stack:
        return ["No LoRA in the stack.", *problems]
    parts = []
    for e, source in stack:
        te, unet = e.te * m, e.unet * m
        strengths = format_number(round(te, 4)) if te == unet else f"{format_number(round(te, 4))}/{format_number(round(unet, 4))}"
        extra = f" lbw={e.lbw}" if e.lbw else ""
        if e.start is not None or e.stop is not None:
            extra += f" steps {e.start or 0}-{e.stop if e.stop is not None else '∞'}"
        parts.append(f"{e.name} {strengths}{extra}" + (f" ({source})" if source != "prompt" else ""))
    lines = [f"{len(stack)} LoRA{'s' if len(stack) != 1 else ''}: " + ", ".join(parts) + (f" — all ×{format_number(m)}" if m != 1 else "")]
    lines += problems
    lines += notes
    if known is not None:
        lines += [f"{e.name}: no such LoRA" for e, _ in stack if e.name not in known]
    lines += [f"{name}: made for another base model" for name in wrong_family]
    total = sum(abs(max(e.te, e.unet, key=abs)) * abs(m) for e, _ in stack)
    if len(stack) >= 5:
        lines.append("5+ LoRAs tend to make artefacts; lower the weights or use block weights")
    elif total > budget:
        lines.append(f"total strength {total:.2g} is past {budget:g}: lower the weights or use block weights")
    return lines


def last_job_line(activation) -> str:
    """The summary's "Last job" line for a session ``Activation``: what it applied, how, and how long it took."""
    r = activation.report
    if not activation.uses:
        return "no LoRA"
    names = ", ".join(u.mentioned for u in activation.uses)
    work = f"{r.layers_written} weights written" if r is not None and r.layers_written else "nothing to rewrite"
    return f"{names} ({activation.mode}): {work} in {activation.seconds * 1000:.0f} ms"
