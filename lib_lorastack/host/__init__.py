"""What the WebUI integration decides, host-free: the stack state across jobs, options, infotext and paste.

The WebUI adapter (``lorastack_webui/``, the only code that imports the WebUI's ``modules``) turns the WebUI's
objects into the plain values these functions take (``ModelHandle``, tag argument lists, option values) and shows
what they return where the user looks.
"""

from .infotext import LORA_HASHES, STACK_ERRORS, STACK_FIELD, lora_hashes_value, parse_lora_hashes, repair_pasted_prompt
from .options import SECTION, SPECS, OptionSpec, StackOptions, read_options
from .session import Activation, LoraUse, ModelHandle, StackSession

__all__ = [
    "LORA_HASHES", "SECTION", "SPECS", "STACK_ERRORS", "STACK_FIELD", "Activation", "LoraUse", "ModelHandle", "OptionSpec",
    "StackOptions", "StackSession", "lora_hashes_value", "parse_lora_hashes", "read_options", "repair_pasted_prompt",
]  # fmt: skip
