"""The settings of the "LoRA Stack" section: what each one is, its default, and reading them safely."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SECTION = ("lora_stack", "LoRA Stack")

MESSAGES_CHOICES = ("console and job info", "console, job info and popup", "console only")


@dataclass(frozen=True)
class OptionSpec:
    key: str
    default: object
    label: str
    kind: str  # "checkbox", "radio", "number", "text"
    choices: tuple[str, ...] = ()
    info: str = ""
    minimum: float | None = None
    maximum: float | None = None


SPECS: tuple[OptionSpec, ...] = (
    OptionSpec("lorastack_takeover", True, "Handle <lora:…> and <lyco:…> tags with LoRA Stack", "checkbox",
               info="off: the built-in Lora extension handles the tags again and LoRA Stack patches nothing"),
    OptionSpec("lorastack_mode", "auto", "Patching mode", "radio", ("auto", "fused", "online"),
               info="fused: weights are written once, no cost per step; online: LoRAs are computed in the forward, "
                    "weights untouched; auto: fused, online for weights stored in 8-bit floats"),
    OptionSpec("lorastack_backups", "auto", "Where pristine copies of patched weights are kept", "radio", ("auto", "gpu", "cpu"),
               info="auto: on the GPU while its memory allows, else in (pinned) CPU memory"),
    OptionSpec("lorastack_cache_mib", 2048, "Memory for LoRA factors kept on the GPU (MiB)", "number", minimum=0, maximum=1 << 20),
    OptionSpec("lorastack_messages", MESSAGES_CHOICES[0], "Where problems with LoRAs are shown", "radio", MESSAGES_CHOICES,
               info="the console line and the infotext field 'LoRA stack errors' are always written"),
    OptionSpec("lorastack_rows", 6, "Rows in the LoRA Stack panel", "number", minimum=1, maximum=32,
               info="shown one by one as 'Add row' is pressed; needs a reload of the UI"),
    OptionSpec("lorastack_presets_file", "", "Preset file (empty: lorastack-presets.json in the WebUI's data folder)", "text"),
    OptionSpec("lorastack_preset_triggers", True, "Add a preset's trigger words when <lorastack:NAME> expands", "checkbox"),
    OptionSpec("lorastack_infotext", True, "Write the 'LoRA stack' field into the infotext", "checkbox",
               info="names, short hashes, strengths, resolved block weights and schedules of the applied LoRAs"),
)  # fmt: skip


@dataclass(frozen=True)
class StackOptions:
    takeover: bool = True
    mode: str = "auto"
    backups: str = "auto"
    cache_mib: int = 2048
    messages: str = MESSAGES_CHOICES[0]
    infotext: bool = True
    rows: int = 6
    presets_file: str = ""
    preset_triggers: bool = True

    @property
    def engine_backups(self) -> str:
        return {"gpu": "device"}.get(self.backups, self.backups)

    @property
    def popup(self) -> bool:
        return self.messages == MESSAGES_CHOICES[1]

    @property
    def job_info(self) -> bool:
        return self.messages != MESSAGES_CHOICES[2]


_FIELDS = {
    "lorastack_takeover": "takeover", "lorastack_mode": "mode", "lorastack_backups": "backups",
    "lorastack_cache_mib": "cache_mib", "lorastack_messages": "messages", "lorastack_infotext": "infotext",
    "lorastack_rows": "rows", "lorastack_presets_file": "presets_file", "lorastack_preset_triggers": "preset_triggers",
}  # fmt: skip


def read_options(get: Callable[[str, object], object]) -> tuple[StackOptions, list[str]]:
    """The options from ``get(key, default)`` (e.g. the WebUI's ``shared.opts.data.get``); a value that does not
    fit its setting falls back to the default, with a message naming the setting and the value."""
    values: dict[str, object] = {}
    problems: list[str] = []
    for spec in SPECS:
        raw = get(spec.key, spec.default)
        value, fault = _check(spec, raw)
        if fault:
            problems.append(f"setting {spec.label!r} ({spec.key}): {fault}; using {spec.default!r}")
            value = spec.default
        values[_FIELDS[spec.key]] = value
    return StackOptions(**values), problems  # type: ignore[arg-type]


def _check(spec: OptionSpec, raw: object) -> tuple[object, str | None]:
    if spec.kind == "checkbox":
        return (raw, None) if isinstance(raw, bool) else (None, f"{raw!r} is not on/off")
    if spec.kind == "radio":
        return (raw, None) if raw in spec.choices else (None, f"{raw!r} is not one of {', '.join(spec.choices)}")
    if spec.kind == "text":
        return (raw.strip(), None) if isinstance(raw, str) and "\0" not in raw else (None, f"{raw!r} is not text")
    try:
        number = int(raw)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None, f"{raw!r} is not a whole number"
    if (spec.minimum is not None and number < spec.minimum) or (spec.maximum is not None and number > spec.maximum):
        return None, f"{number} is outside {spec.minimum:g}…{spec.maximum:g}"
    return number, None
