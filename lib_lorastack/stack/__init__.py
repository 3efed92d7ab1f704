"""From a stack request to loaded LoRAs: the LoRA index (catalog) and request resolution."""

from .catalog import LoraCatalog
from .resolve import LoraCache, ResolvedStack, resolve_request

__all__ = ["LoraCache", "LoraCatalog", "ResolvedStack", "resolve_request"]
