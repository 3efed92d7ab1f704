"""Pristine copies of the parameters a stack touches, and only those.

Placement: ``"device"`` keeps each copy beside its weight; ``"cpu"`` keeps it in CPU memory (pinned when CUDA is
present, so it streams back at full speed); ``"auto"`` (the default) keeps copies on the GPU while its free memory
allows, within ``device_budget`` bytes when given, and the rest in pinned CPU memory. A copy is dropped as soon as
its parameter is pristine again, so backup bytes equal touched bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .plan import ParamKey

PLACEMENTS = ("auto", "cpu", "device")
RESERVE_FRACTION = 0.10  # auto placement leaves this share of the GPU (and at least RESERVE_MIN) free
RESERVE_MIN = 2 << 30


class BackupStore:
    def __init__(self, placement: str = "auto", device_budget: int | None = None) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"backup placement must be one of {PLACEMENTS}, not {placement!r}")
        self.placement = placement
        self.device_budget = device_budget
        self._saved: dict[ParamKey, torch.Tensor] = {}
        self._allowance: dict[str, int] = {}  # auto: bytes still allowed on each GPU during this apply

    def __contains__(self, key: ParamKey) -> bool:
        return key in self._saved

    def begin(self) -> None:
        """Start of an apply: measure what auto placement may still put on each GPU."""
        self._allowance.clear()

    def save(self, key: ParamKey, param: torch.Tensor) -> int:
        """Keep a copy of ``param`` unless one is kept already; the bytes newly copied."""
        if key in self._saved:
            return 0
        data = param.detach()
        nbytes = data.numel() * data.element_size()
        if data.device.type == "cpu" or self._on_device(data.device, nbytes):
            copy = data.clone()
        else:
            copy = torch.empty(data.shape, dtype=data.dtype, pin_memory=torch.cuda.is_available())
            copy.copy_(data, non_blocking=True)
        self._saved[key] = copy
        return nbytes

    def _on_device(self, device: torch.device, nbytes: int) -> bool:
        if self.placement == "device":
            return True
        if self.placement == "cpu" or device.type != "cuda":
            return False
        name = str(device)
        if name not in self._allowance:
            free, total = torch.cuda.mem_get_info(device)
            allowance = free - max(RESERVE_MIN, int(RESERVE_FRACTION * total))
            if self.device_budget is not None:
                allowance = min(allowance, self.device_budget - self.nbytes_on("device"))
            self._allowance[name] = allowance
        if nbytes > self._allowance[name]:
            return False
        self._allowance[name] -= nbytes
        return True

    def get(self, key: ParamKey) -> torch.Tensor:
        """The stored copy (wherever it lives)."""
        return self._saved[key]

    def pristine(self, key: ParamKey, device: torch.device) -> torch.Tensor:
        return self._saved[key].to(device, non_blocking=True)

    def on_device(self, key: ParamKey) -> bool:
        return self._saved[key].device.type != "cpu"

    def restore(self, key: ParamKey, param: torch.Tensor) -> None:
        """Write the pristine value back (bit for bit)."""
        with torch.no_grad():
            param.copy_(self._saved[key], non_blocking=True)

    def swap_in(self, key: ParamKey, param: torch.Tensor) -> bool:
        """Give ``param`` its pristine value by taking over the copy's memory (no copy), and forget the copy; False
        (nothing done) unless both are whole, alike CPU tensors. The parameter object stays the same, so every
        module and reference holding it sees the pristine value; its patched memory is freed."""
        saved = self._saved.get(key)
        if saved is None or not _swappable(param, saved):
            return False
        param.data = self._saved.pop(key)
        return True

    def drop(self, key: ParamKey) -> None:
        self._saved.pop(key, None)

    def keys(self) -> list[ParamKey]:
        return list(self._saved)

    def __iter__(self) -> Iterator[ParamKey]:
        return iter(list(self._saved))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._saved.values())

    def nbytes_on(self, where: str) -> int:
        """Bytes kept on the CPU (``"cpu"``) or on a GPU (``"device"``)."""
        cpu = where == "cpu"
        return sum(t.numel() * t.element_size() for t in self._saved.values() if (t.device.type == "cpu") == cpu)


def _swappable(param: torch.Tensor, saved: torch.Tensor) -> bool:
    return (
        param.device.type == "cpu" and saved.device.type == "cpu"
        and param.dtype == saved.dtype and param.shape == saved.shape and param.stride() == saved.stride()
        and saved.storage_offset() == 0 and param.storage_offset() == 0
        and param.untyped_storage().nbytes() == param.numel() * param.element_size()
        and saved.untyped_storage().nbytes() == saved.numel() * saved.element_size()
        and type(param.data) is torch.Tensor
        and _sole_user(param)
    )  # fmt: skip


def _sole_user(param: torch.Tensor) -> bool:
    """No other tensor (a view, a tied weight, a host's reference to the data) uses ``param``'s memory: such a
    tensor would keep seeing the patched values after a swap. Unknown (no use count in this torch): not sole."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return False
    return use_count(param.untyped_storage()._cdata) <= 2  # the parameter's own and the storage object asked here
