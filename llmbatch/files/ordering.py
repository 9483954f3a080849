"""Lines sorted by a number, with bounded memory: an external merge sort.

`--ordered` puts an output in input order, and an output can be far bigger than
memory. The lines are cut into runs of about `RUN_BYTES`, each run sorted in memory and
spilled to a temporary file, and the runs merged (`heapq.merge`) as they are read back:
memory is one run, whatever the file's size.
"""

from __future__ import annotations

import heapq
import struct
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO

__all__ = ["LAST", "RUN_BYTES", "sorted_lines"]

RUN_BYTES = 32 << 20
# The key of a line that has no number to sort by: after all that have one.
LAST = (1 << 63) - 1
_HEAD = struct.Struct("<QQI")  # a spilled record: its key, its place in the input, its length


def sorted_lines(keyed: Iterable[tuple[int, bytes]], *, run_bytes: int = RUN_BYTES) -> Iterator[bytes]:
    """The lines of `keyed` ((key, line) pairs) in ascending order of key; lines with
    equal keys keep their order."""
    runs: list[IO[bytes]] = []
    batch: list[tuple[int, int, bytes]] = []
    size = seq = 0
    try:
        for key, line in keyed:
            batch.append((key, seq, line))
            seq += 1
            size += len(line)
            if size >= run_bytes:
                runs.append(_spill(batch))
                batch, size = [], 0
        if not runs:  # it all fits: no temporary files
            batch.sort()
            for _, _, line in batch:
                yield line
            return
        if batch:
            runs.append(_spill(batch))
        del batch
        for _, _, line in heapq.merge(*(_read(run) for run in runs)):
            yield line
    finally:
        for run in runs:
            run.close()


def _spill(batch: list[tuple[int, int, bytes]]) -> IO[bytes]:
    batch.sort()
    f = tempfile.TemporaryFile(prefix="llmbatch-sort-")  # noqa: SIM115 (closed by sorted_lines)
    for key, seq, line in batch:
        f.write(_HEAD.pack(key, seq, len(line)))
        f.write(line)
    f.seek(0)
    return f


def _read(f: IO[bytes]) -> Iterator[tuple[int, int, bytes]]:
    # (key, place) is unique: equal keys come out in the order they went in.
    while head := f.read(_HEAD.size):
        key, seq, length = _HEAD.unpack(head)
        yield key, seq, f.read(length)
