"""Progress for long work: a callback a UI can pass, and a stdlib progress line for the command line."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

# progress(done, total, what): called as work advances; ``done == total`` once at the end.
ProgressFn = Callable[[int, int, str], None]


def no_progress(done: int, total: int, what: str) -> None:
    return None


class ProgressLine:
    """Draws ``what: done/total (pct %)`` on one line of ``stream`` (stderr), at most every ``interval`` seconds.
    When the stream is not a terminal, it writes a line at most every ``interval`` seconds and at the end."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.2) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = 0.0
        self._width = 0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if not self._tty:
            self.interval = max(interval, 5.0)

    def __call__(self, done: int, total: int, what: str) -> None:
        now = time.monotonic()
        finished = done >= total
        if not finished and now - self._last < self.interval:
            return
        self._last = now
        pct = 100.0 * done / total if total else 100.0
        text = f"{what}: {done}/{total} ({pct:.0f} %)"
        if self._tty:
            self.stream.write("\r" + text.ljust(self._width) + ("\n" if finished else ""))
            self._width = 0 if finished else len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
