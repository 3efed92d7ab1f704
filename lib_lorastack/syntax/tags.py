"""Finding extra-network tags the way the WebUI does: ``<(\\w+):([^>]+)>``, arguments split on ``:``, an argument
with exactly one ``=`` is named (``split('=', 2)`` giving two parts), every other one positional."""

from __future__ import annotations

import re
from dataclasses import dataclass

TAG_RE = re.compile(r"<(\w+):([^>]+)>")
LORA_TAGS = ("lora", "lyco")


@dataclass(frozen=True)
class Arg:
    text: str
    span: tuple[int, int]  # in the prompt

    @property
    def named(self) -> tuple[str, str] | None:
        parts = self.text.split("=", 2)
        return (parts[0], parts[1]) if len(parts) == 2 else None


@dataclass(frozen=True)
class RawTag:
    kind: str
    span: tuple[int, int]
    args: tuple[Arg, ...]

    @property
    def positional(self) -> list[Arg]:
        return [a for a in self.args if a.named is None]

    def named(self) -> dict[str, Arg]:
        out: dict[str, Arg] = {}
        for a in self.args:
            kv = a.named
            if kv is not None:
                out[kv[0]] = a  # the WebUI keeps the last value of a repeated name
        return out


def find_tags(text: str) -> list[RawTag]:
    tags: list[RawTag] = []
    for m in TAG_RE.finditer(text):
        start = m.start(2)
        args: list[Arg] = []
        for piece in m.group(2).split(":"):
            args.append(Arg(piece, (start, start + len(piece))))
            start += len(piece) + 1
        tags.append(RawTag(m.group(1), (m.start(), m.end()), tuple(args)))
    return tags


def strip_tags(text: str) -> str:
    """The prompt as the text encoder sees it (the WebUI removes every extra-network tag)."""
    return TAG_RE.sub("", text)
