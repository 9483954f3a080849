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
or ``llm_line`` in merged rows) with the external merge sort of `llmbatch.files.ordering`.
Lines without a line number go last, in their order. Compressed outputs are read as
such (the merged file is written plain, or compressed as its own name says). The output is
written beside itself and renamed into place, so a merge that fails leaves no half file;
every input and the output are locked as a run locks its output (a shard still being
written is refused, not half merged).
"""

from __future__ import annotations

import contextlib
import os
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from llmbatch.core.errors import ConfigError
from llmbatch.files import sidecars
from llmbatch.files.idset import IdSet
from llmbatch.files.jsonl import codec_for, count_lines, open_lines, write_lines
from llmbatch.files.locking import OutputLock
from llmbatch.files.ordering import LAST, RUN_BYTES, sorted_lines
from llmbatch.output.readback import input_line_of, read_line, read_tail
from llmbatch.output.records import Format
from llmbatch.rerun.plan import Bitmap, sync_dir

__all__ = ["Merged", "merge"]


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
        tmp = sidecars.merging(output)
        lines = _kept(inputs, keep)
        if ordered:
            lines = sorted_lines(((input_line(raw), raw) for raw in lines), run_bytes=run_bytes)
        try:
            with tmp.open("wb") as dst:
                written = write_lines(dst, lines, codec_for(output))
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, output)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        sync_dir(output.parent)
    return Merged(files=len(inputs), lines=written, dropped=dropped, torn=torn)


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
    with open_lines(path) as f:
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
        with open_lines(path) as f:
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
    """The input line number an output line carries (LAST when it carries none)."""
    try:
        line = input_line_of(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return LAST
    return LAST if line is None else min(line, LAST)
