"""`llmbatch merge OUT... -o ALL`: outputs (the shards of one input, typically) joined
into one file with one line per custom_id.

Where an id has several lines, the newest wins, as compaction keeps it: the files count
as given oldest first, and within a file a later line is newer. Lines that are not
llmbatch output lines are kept as they are (not ours to judge); a torn last line (a
killed run's) is skipped, as a rerun would drop it. All the inputs must be of one
format (Batch lines or merged rows).

Memory is bounded whatever the size: the first pass keeps one number per id and one
bit per line (`IdSet`, `Bitmap`, as `compact` does); the second copies the kept lines as
bytes. ``--ordered`` sorts them by the input line number each carries (``llmbatch.line``,
or ``llm_line`` in merged rows) with an external merge sort: sorted runs of at most
`RUN_BYTES` spill to temporary files beside the output, and a k-way merge of the runs
writes the result. Lines without a line number go last, in their order. The output is
written beside itself and renamed into place, so a merge that fails leaves no half file;
every input and the output are locked as a run locks its output (a shard still being
written is refused, not half merged).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import tempfile
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import orjson

from llmbatch.errors import ConfigError
from llmbatch.idset import IdSet
from llmbatch.jsonl import count_lines
from llmbatch.locking import OutputLock
from llmbatch.output import Format, read_line, read_tail
from llmbatch.resume import Bitmap

__all__ = ["RUN_BYTES", "Merged", "merge"]

# The most line bytes sorted in memory at once by --ordered (then a run is spilled).
RUN_BYTES = 64 << 20
# The sort key of a line that carries no input line number: after all that do.
NO_LINE = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Merged:
    """What a merge did."""

    files: int
    lines: int  # lines written
    dropped: int  # older lines of an id that has a newer one
    torn: int  # torn last lines skipped


def merge(
    inputs: Sequence[Path], output: Path, *, ordered: bool = False, run_bytes: int = RUN_BYTES
) -> Merged:
    """Join `inputs` into `output` (see the module docstring)."""
    _check(inputs, output)
    with contextlib.ExitStack() as stack:
        for path in dict.fromkeys(p.resolve() for p in [*inputs, output]):
            stack.enter_context(OutputLock(path))
        keep, dropped, torn = _newest(inputs)
        tmp = output.with_name(output.name + ".merging")
        lines = _kept(inputs, keep)
        if ordered:
            lines = _by_input_line(lines, run_bytes, output.parent)
        written = 0
        try:
            with tmp.open("wb") as dst:
                for raw in lines:
                    dst.write(raw)
                    written += 1
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, output)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _sync_dir(output.parent)
    return Merged(files=len(inputs), lines=written, dropped=dropped, torn=torn)


def _sync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder if str(folder) else ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check(inputs: Sequence[Path], output: Path) -> None:
    if not inputs:
        raise ConfigError("merge needs at least one file to merge")
    for path in inputs:
        if not path.is_file():
            raise ConfigError(f"not a file: {path}" if path.exists() else f"file not found: {path}")
    if output.is_dir():
        raise ConfigError(f"output is a directory, not a file: {output}")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"output folder does not exist: {folder}")


def _whole_lines(path: Path) -> Iterator[bytes]:
    """The file's lines, newline included; a last line without one (torn) is left out."""
    with path.open("rb") as f:
        for raw in f:
            if raw.endswith(b"\n"):
                yield raw


def _newest(inputs: Sequence[Path]) -> tuple[Bitmap, int, int]:
    """Pass one: which lines to keep (numbered across all inputs), how many older lines
    are dropped, and how many torn lines were found."""
    ids = IdSet(sum(count_lines(p) for p in inputs))
    newest = array("Q", bytes(8 * ids.capacity))  # per id: 1 + the number of its newest line
    keep = Bitmap()
    formats: dict[Format, Path] = {}
    number = dropped = torn = 0
    for path in inputs:
        with path.open("rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    torn += 1
                    break
                line = read_tail(raw)
                if line is None:
                    try:
                        line = read_line(orjson.loads(raw))
                    except orjson.JSONDecodeError:
                        line = None
                if line is None:
                    keep.add(number)  # not an llmbatch line: kept as it is
                else:
                    formats.setdefault(line.format, path)
                    slot = ids.locate(line.custom_id, add=True)
                    dropped += newest[slot] != 0
                    newest[slot] = number + 1
                number += 1
    if len(formats) > 1:
        raise ConfigError(
            f"{formats['batch']} holds Batch lines and {formats['merged']} merged rows: "
            "merge files of one format"
        )
    for n in newest:
        if n:
            keep.add(n - 1)
    return keep, dropped, torn


def _kept(inputs: Sequence[Path], keep: Bitmap) -> Iterator[bytes]:
    """Pass two: the kept lines, in the inputs' order."""
    number = 0
    for path in inputs:
        for raw in _whole_lines(path):
            if number in keep:
                yield raw
            number += 1


def input_line(raw: bytes) -> int:
    """The input line number an output line carries (NO_LINE when it carries none)."""
    try:
        rec: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return NO_LINE
    if not isinstance(rec, dict):
        return NO_LINE
    meta = rec.get("llmbatch")
    line = (
        rec.get("llm_line")
        if "llm_custom_id" in rec
        else meta.get("line")
        if isinstance(meta, dict)
        else None
    )
    return line if isinstance(line, int) and not isinstance(line, bool) and 0 <= line < NO_LINE else NO_LINE


def _by_input_line(lines: Iterable[bytes], run_bytes: int, folder: Path) -> Iterator[bytes]:
    """`lines` sorted by their input line number, stably, in bounded memory: sorted runs
    of at most `run_bytes`, spilled to temporary files, then merged."""
    runs: list[IO[bytes]] = []
    buffer: list[tuple[int, bytes]] = []
    size = 0
    try:
        for raw in lines:
            buffer.append((input_line(raw), raw))
            size += len(raw)
            if size >= run_bytes:
                runs.append(_spill(buffer, folder))
                buffer, size = [], 0
        buffer.sort(key=itemgetter(0))  # stable: equal keys keep their order
        if not runs:
            for _, raw in buffer:
                yield raw
            return
        if buffer:
            runs.append(_spill(buffer, folder))
            buffer = []
        # heapq.merge is stable across its inputs too: the runs are in arrival order.
        for _, raw in heapq.merge(*(_read_run(f) for f in runs), key=itemgetter(0)):
            yield raw
    finally:
        for f in runs:
            f.close()


def _spill(buffer: list[tuple[int, bytes]], folder: Path) -> IO[bytes]:
    buffer.sort(key=itemgetter(0))
    f = tempfile.TemporaryFile(prefix="llmbatch-merge-", dir=folder if str(folder) else ".")  # noqa: SIM115
    for key, raw in buffer:
        f.write(b"%d " % key)
        f.write(raw)
    f.seek(0)
    return f


def _read_run(f: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for entry in f:
        key, _, raw = entry.partition(b" ")
        yield int(key), raw
