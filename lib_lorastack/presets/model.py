"""What a preset is: a named stack of LoRAs (identified by hash, with file name and alias as fallbacks), its
trigger words, an overall scale and the base-model family it was made for. Immutable; stores hold a document."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from ..syntax.request import StackEntry

SCHEMA_VERSION = 1
FORMAT_NAME = "lorastack-presets"
FAMILIES = ("sd1", "sd2", "sdxl")
# sha256 of zero bytes: the hash of an empty or unreadable file; it identifies nothing (Forge #1769).
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class PresetEntry:
    """One LoRA of a preset.

    ``name``: the name shown to the user and the last lookup fallback (as typed in a prompt). ``sha256``: of the
    whole file, the primary identity; ``addnet``: the WebUI's LoRA hash (infotext "Lora hashes"). ``file``: the file
    name when saved (``alice_v2.safetensors``); ``alias``: its ``ss_output_name``. Strengths, block weights and the
    schedule mean what they mean in a ``<lora:…>`` tag; ``enabled`` False keeps the row but leaves it out.
    """

    name: str
    te: float = 1.0
    unet: float = 1.0
    sha256: str | None = None
    addnet: str | None = None
    file: str | None = None
    alias: str | None = None
    dyn: int | None = None
    lbw: str | None = None
    lbwe: str | None = None
    x: float | None = None
    start: int | None = None
    stop: int | None = None
    enabled: bool = True

    @property
    def file_stem(self) -> str | None:
        if not self.file:
            return None
        stem, dot, ext = self.file.rpartition(".")
        return stem if dot and stem and ext.lower() in ("safetensors", "pt", "ckpt", "pth", "bin") else self.file

    @property
    def label(self) -> str:
        """How messages name this LoRA: its file name when known, else its name."""
        return self.file or self.name

    def to_stack_entry(self, name: str, factor: float = 1.0, *, lbw: str | None = None) -> StackEntry:
        """The ``StackEntry`` this row asks for, under prompt name ``name``, strengths times ``factor``."""
        return StackEntry(
            name,
            self.te * factor,
            self.unet * factor,
            self.dyn,
            self.lbw if lbw is None else lbw,
            self.lbwe,
            self.x,
            self.start,
            self.stop,
        )

    @classmethod
    def from_stack_entry(
        cls,
        entry: StackEntry,
        *,
        sha256: str | None = None,
        addnet: str | None = None,
        file: str | None = None,
        alias: str | None = None,
        enabled: bool = True,
    ) -> PresetEntry:
        if sha256 == EMPTY_SHA256:
            sha256 = None
        return cls(
            entry.name, entry.te, entry.unet, sha256, addnet, file, alias,
            entry.dyn, entry.lbw, entry.lbwe, entry.x, entry.start, entry.stop, enabled,
        )  # fmt: skip


@dataclass(frozen=True)
class Preset:
    """A named stack. ``scale`` multiplies every strength; ``triggers`` go into the prompt and
    ``negative_triggers`` into the negative prompt when trigger words are asked for. ``family``: sd1, sd2, sdxl or
    None (any). ``created``/``updated``: ISO 8601 UTC, set by the store."""

    name: str
    entries: tuple[PresetEntry, ...]
    description: str = ""
    triggers: str = ""
    negative_triggers: str = ""
    scale: float = 1.0
    family: str | None = None
    created: str | None = None
    updated: str | None = None

    def content_equal(self, other: Preset) -> bool:
        """Equal apart from the times."""
        return replace(self, created=None, updated=None) == replace(other, created=None, updated=None)


@dataclass
class PresetDocument:
    """The whole store: presets by name (in insertion order) and LBW block presets (NAME -> comma vector)."""

    presets: dict[str, Preset] = field(default_factory=dict)
    block_presets: dict[str, str] = field(default_factory=dict)

    def copy(self) -> PresetDocument:
        return PresetDocument(dict(self.presets), dict(self.block_presets))
