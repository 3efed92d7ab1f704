"""What each host's adapter provides: the loaded model as the engine sees it, the model lifecycle, the built-in."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from lib_lorastack.formats.targets import Family, Target


class HostAdapter:
    name = "?"
    label = "?"
    hash_kind = "addnet"  # the short hash the host writes in "Lora hashes": "addnet" (A1111) or "sha256" (Forge)

    def family_of(self, sd_model) -> Family | None:
        """The model's family if the engine handles it, else None (its tags then go to the built-in)."""
        raise NotImplementedError

    def model_name(self, sd_model) -> str:
        """What to call the model's kind in a message ("SD3", "Flux", …)."""
        return type(sd_model).__name__

    def modules(self, sd_model, family: Family) -> tuple[Mapping[str, torch.nn.Module], Callable[[Target], Target] | None]:
        """Our checkpoint-style name → live module, and the target translation the host's layout needs."""
        raise NotImplementedError

    def builtin_reason(self, sd_model) -> str | None:
        """Why the built-in must apply this model's LoRAs although its family is ours (None: we apply them)."""
        return None

    def storage_note(self, sd_model) -> str | None:
        """How the weights are stored when that chooses our mode (for the job info), else None."""
        return None

    def mode_for(self, sd_model, mode: str) -> str:
        """The engine mode to use on this model given the user's setting."""
        return mode

    def install(self, host) -> None:
        """Hook the host's model lifecycle (``host``: the WebUIHost, whose ``release``/``session`` drop our state)."""

    def uninstall(self) -> None:
        pass

    def restore_builtin(self, sd_model) -> int:
        """Undo whatever the built-in Lora extension merged into ``sd_model`` (and keep it from merging its cached
        stack again). The number of layers or patch sets undone."""
        return 0

    def drops_replaced_models(self) -> bool:
        """Whether a newly loaded model replaces every other one (Forge keeps one model)."""
        return False
