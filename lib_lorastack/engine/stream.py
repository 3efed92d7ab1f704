"""Pristine values on the compute device, in the order the writes need them.

Backups kept in pinned CPU memory are copied to the GPU ahead of use on a side stream, a bounded window at a time,
so that the transfers overlap the products instead of preceding each one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import torch

from .backups import BackupStore
from .plan import ParamKey

WINDOW_BYTES = 512 << 20


class PristineStream:
    def __init__(
        self,
        backups: BackupStore,
        order: Sequence[ParamKey],
        device_of: Callable[[ParamKey], torch.device],
        window_bytes: int = WINDOW_BYTES,
    ) -> None:
        self.backups = backups
        self.device_of = device_of
        self.window = window_bytes
        self._queue = deque(k for k in order if k in backups and not backups.on_device(k) and device_of(k).type == "cuda")
        self._ready: dict[ParamKey, tuple[torch.Tensor, torch.cuda.Event | None]] = {}
        self._in_flight = 0
        self._streams: dict[str, torch.cuda.Stream] = {}

    def get(self, key: ParamKey) -> torch.Tensor:
        """The pristine value of ``key`` on its weight's device (the weight must have a backup)."""
        self._fill()
        item = self._ready.pop(key, None)
        if item is None:  # not queued (device-resident, CPU model) or already used once
            return self.backups.pristine(key, self.device_of(key))
        tensor, event = item
        self._in_flight -= tensor.numel() * tensor.element_size()
        if event is not None:
            current = torch.cuda.current_stream(tensor.device)
            current.wait_event(event)
            tensor.record_stream(current)
        return tensor

    def _fill(self) -> None:
        while self._queue and (self._in_flight < self.window or not self._ready):
            key = self._queue.popleft()
            if key not in self.backups:
                continue
            source = self.backups.get(key)
            device = self.device_of(key)
            stream = self._streams.get(str(device))
            if stream is None:
                stream = self._streams[str(device)] = torch.cuda.Stream(device)
                stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                tensor = source.to(device, non_blocking=True)
                event = torch.cuda.Event()
                event.record(stream)
            self._ready[key] = (tensor, event)
            self._in_flight += tensor.numel() * tensor.element_size()
