"""One run per output at a time: an advisory lock on a file beside the output.

Two runs on one output would both pay for every item and write every id twice. The
lock is `flock` on ``OUTPUT.lock``, taken without waiting: a second run is told at once
who holds it. The kernel drops a flock when its process dies, so a killed run never
leaves a lock that blocks; the file itself is removed on release.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from llmbatch.core.errors import ConfigError
from llmbatch.files import sidecars

__all__ = ["OutputLock"]


class OutputLock:
    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = sidecars.lock(output)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ConfigError naming the run that holds it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ConfigError(f"cannot create lock file {self.path}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f" (pid {holder})" if holder else ""
                raise ConfigError(
                    f"{self.output} is being written by another llmbatch run{who}; "
                    "wait for it to finish, or choose another --output"
                ) from None
            # The holder before us may have removed the file between our open and our
            # flock: then we hold a lock on a file nobody else will see. Start again.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # while still held: a newcomer then makes a new file
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        return str(int(os.pread(fd, 32, 0).decode().strip()))
    return ""
