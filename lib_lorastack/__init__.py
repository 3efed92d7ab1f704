"""sd-webui-lorastack: the host-free core.

Imports only the standard library, torch and safetensors. The WebUI / Forge adapter lives in
``scripts/`` and reaches this package through plain functions and small protocols.
"""

__version__ = "0.1.0"
