"""The prompt grammar users already type (A1111, Forge, lora-block-weight) → a typed stack request."""

from .format import format_entry, format_number, format_request
from .parse import parse_prompt
from .request import Diagnostic, StackEntry, StackRequest
from .rewrite import (
    LoraTag,
    PromptEdit,
    add_lora_tag,
    add_words,
    find_lora_tags,
    has_words,
    remove_lora_tags,
    remove_words,
    set_lora_tag,
)

__all__ = [
    "Diagnostic",
    "LoraTag",
    "PromptEdit",
    "StackEntry",
    "StackRequest",
    "add_lora_tag",
    "add_words",
    "find_lora_tags",
    "format_entry",
    "format_number",
    "format_request",
    "has_words",
    "parse_prompt",
    "remove_lora_tags",
    "remove_words",
    "set_lora_tag",
]
