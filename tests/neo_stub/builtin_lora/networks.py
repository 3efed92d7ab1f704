"""Stand-in for Neo's sd_forge_lora networks.py: Forge's (tests/forge_stub/builtin_lora/networks.py, which Neo's
fork kept), except that Neo's ``ModelPatcher.add_patches`` takes its patches and strengths positionally."""

from pathlib import Path

_FORGE = Path(__file__).resolve().parents[2] / "forge_stub" / "builtin_lora" / "networks.py"
exec(compile(_FORGE.read_text(encoding="utf-8"), str(_FORGE), "exec"))


def add_patches(patcher, patches, strength, filename, online) -> None:
    patcher.add_patches(patches, strength, 1.0, filename=filename, online_mode=online)
