"""Stand-in for Neo's extra_networks_lora.py: the same as Forge's (tests/forge_stub/builtin_lora)."""

from pathlib import Path

_FORGE = Path(__file__).resolve().parents[2] / "forge_stub" / "builtin_lora" / "extra_networks_lora.py"
exec(compile(_FORGE.read_text(encoding="utf-8"), str(_FORGE), "exec"))
