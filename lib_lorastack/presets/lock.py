"""An inter-process lock on a side file (``<store>.lock``): ``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows.

The lock lives on its own file because the store itself is replaced (``os.replace``) on every save, and a lock on
a replaced file would protect nothing. Each holder opens its own handle, so threads of one process exclude each
other too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType

from .errors import PresetLockTimeout

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt


class FileLock:
    """``with FileLock(path): …`` holds an exclusive lock on ``path`` (created if missing) or raises
    ``PresetLockTimeout`` after ``timeout`` seconds."""

    def __init__(self, path: str | Path, timeout: float = 10.0, poll: float = 0.01) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.poll = poll
        self._fd: int | None = None

    def _try_lock(self, fd: int) -> bool:
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # locks byte 0, which need not exist
        except OSError:
            return False
        return True

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while not self._try_lock(fd):
            if time.monotonic() >= deadline:
                os.close(fd)
                raise PresetLockTimeout(self.path, self.timeout)
            time.sleep(self.poll)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            else:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        finally:
            os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
