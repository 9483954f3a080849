"""Where finished items and bad input lines go: the output file (appended, one whole
line each), the in-order writer for ``--ordered`` on standard output, and the rejects
(a file, or standard error). The lines themselves are built by `llmbatch.output.records`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from llmbatch.core.errors import InputError
from llmbatch.core.values import Finished
from llmbatch.files.jsonl import JsonlWriter
from llmbatch.output.records import Format, batch_record, merged_record, reject_record

__all__ = ["InOrder", "OutputFile", "RejectsFile", "StderrRejects"]


class OutputFile:
    """Where finished items go: one whole line each, appended (see `JsonlWriter` for
    when lines reach the disk). `error` is the first failed write, if any."""

    def __init__(
        self, path: Path, *, format: Format = "batch", server: str = "", stream: BinaryIO | None = None
    ) -> None:
        self.path = path
        self.format: Format = format
        self.server = server
        self._record = merged_record if format == "merged" else batch_record
        self._writer = JsonlWriter(path, stream=stream)
        self.lines = 0

    @property
    def error(self) -> OSError | None:
        return self._writer.error

    def write(self, finished: Finished) -> None:
        self._writer.write(self._record(finished, self.server))
        self.lines += 1

    backlog = 0  # finished items held back, not yet written (see InOrder)

    def discard(self, order: int) -> None:
        """An item of this run that will not be written (a stop left it)."""

    def sync(self) -> None:
        """Everything written so far, on disk now (before a record says it is)."""
        self._writer.sync()

    def close(self) -> None:
        self._writer.close()


class InOrder:
    """Writes finished items in the order the run took them from the input (--ordered
    on standard output): an item that finishes early waits for those before it. What
    waits counts as `backlog`, which the engine adds to its window, so memory stays
    bounded by the window however long one slow item takes."""

    def __init__(self, output: OutputFile) -> None:
        self._out = output
        self.path = output.path
        self._next = 0
        self._held: dict[int, Finished | None] = {}  # None: will not come (discarded)

    @property
    def error(self) -> OSError | None:
        return self._out.error

    @property
    def backlog(self) -> int:
        return len(self._held)

    def write(self, finished: Finished) -> None:
        self._held[finished.order] = finished
        self._release()

    def discard(self, order: int) -> None:
        self._held[order] = None
        self._release()

    def _release(self) -> None:
        held = self._held
        while self._next in held:
            finished = held.pop(self._next)
            if finished is not None:
                self._out.write(finished)
            self._next += 1

    def sync(self) -> None:
        self._out.sync()

    def close(self) -> None:
        """What is still held (items after a gap a stop left) goes out in order."""
        for order in sorted(self._held):
            finished = self._held[order]
            if finished is not None:
                self._out.write(finished)
        self._held.clear()
        self._out.close()


class StderrRejects:
    """With `-o -` and no --rejects: each bad line told on stderr, one line each."""

    path = "standard error"
    error = None

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    def write(self, err: InputError) -> None:
        self.log(f"error: rejected line {err.line}: {err}")

    def close(self) -> None:
        return None


class RejectsFile:
    """Bad input lines, one JSON line each. Each run reads the whole input again and
    rejects its bad lines again, so the file is rewritten by every run (a bad line is
    listed once however many reruns it takes), and is only made when there is one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: JsonlWriter | None = None
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    @property
    def error(self) -> OSError | None:
        return self._writer.error if self._writer is not None else None

    def write(self, err: InputError) -> None:
        if self._writer is None:
            self.path.write_bytes(b"")
            self._writer = JsonlWriter(self.path)
        self._writer.write(reject_record(err))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
