"""The prompt grammar users already type (A1111, Forge, lora-block-weight) → a typed stack request."""

from .format import format_entry, format_number, format_request
from .parse import parse_prompt
from .request import Diagnostic, StackEntry, StackRequest

__all__ = ["Diagnostic", "StackEntry", "StackRequest", "format_entry", "format_number", "format_request", "parse_prompt"]
