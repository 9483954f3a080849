"""One newest-line-per-id rewrite, for a resume's compaction and for ``llmbatch merge``.

The lines of one or more outputs (given oldest first; within a file a later line is newer)
become one file in which each custom_id has one line, its newest, in that line's place
(or, ``ordered``, sorted by the input line number each carries). Two rules decide what
else is in it:

- *Ours* is what a rerun reads as an llmbatch output line (`readback.line_of`, which
  `readback.id_of` answers reading no more than the id; the test
  `OutputIndex.scan` applies): so a compaction removes exactly the lines the rerun's
  index counted as repeated. Any other line (not JSON, or JSON without our ``llmbatch``
  block or ``llm_custom_id`` column, even one with a ``custom_id`` of its own) is not ours
  to judge: it is kept as it is, in its place; ``ordered``, after ours, in its order.
- A *torn tail*, a file's last line without its newline (what a killed writer leaves),
  is left out and counted, whether or not it parses, as a rerun drops it. A compressed
  file whose last gzip member or zstd frame is unfinished is refused, naming it: how
  many lines the torn block held cannot be told, and a rerun of that output cuts it
  (compaction cuts it first, as the rerun's scan does).

Memory is bounded whatever the size: one number per id (`IdSet`) and one bit per line
(`Bitmap`) in the first pass; the second copies the kept lines as bytes, through the
external sort of `llmbatch.files.ordering` when ordered. The result replaces its target
atomically (`llmbatch.files.atomic`): a failure leaves the old file and no temporary.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from llmbatch.core.errors import ConfigError
from llmbatch.files import atomic, sidecars
from llmbatch.files.bitmap import Bitmap
from llmbatch.files.idset import IdSet
from llmbatch.files.jsonl import codec_for, count_lines, cut_torn, open_lines, torn_end, write_lines
from llmbatch.files.ordering import LAST, RUN_BYTES, sorted_lines
from llmbatch.output.readback import id_of, input_line_of, read_line
from llmbatch.output.records import Format

__all__ = ["Selection", "compact", "kept_lines", "rewrite", "select"]


@dataclass(frozen=True, slots=True)
class Selection:
    """What the first pass found: the lines to keep (numbered from 0 across the inputs,
    torn tails not counted), and what the rest were."""

    keep: Bitmap
    dropped: int  # older lines of an id that has a newer one
    torn: int  # torn last lines left out
    formats: dict[Format, Path]  # each format of our lines found, and the first file with it

    def check_one_format(self, doing: str) -> None:
        """Refuse (ConfigError) inputs that mix Batch lines and merged rows: `doing` is
        what would have been done with them ("merge", "export")."""
        if len(self.formats) > 1:
            raise ConfigError(
                f"{self.formats['batch']} holds Batch lines and {self.formats['merged']} merged rows: "
                f"{doing} files of one format"
            )


def select(inputs: Sequence[Path]) -> Selection:
    """Pass one: per id, its newest line; every line not ours is kept."""
    for path in inputs:
        _refuse_torn_block(path)
    total = sum(count_lines(p) for p in inputs)
    ids = IdSet(total)
    # Per id: 1 + the number of its newest line (0: none yet).
    newest = array("I" if total < (1 << 32) - 1 else "Q", [0]) * ids.capacity
    keep = Bitmap()
    formats: dict[Format, Path] = {}
    number = dropped = torn = 0
    locate, add = ids.locate, keep.add
    for path in inputs:
        with open_lines(path) as f:
            for raw in f:
                if raw[-1:] != b"\n":
                    torn += 1
                    break
                ours = id_of(raw)
                if ours is None:
                    add(number)
                else:
                    cid, fmt = ours
                    if fmt not in formats:
                        formats[fmt] = path
                    slot = locate(cid, add=True)
                    dropped += newest[slot] != 0
                    newest[slot] = number + 1
                number += 1
    for n in newest:
        if n:
            keep.add(n - 1)
    return Selection(keep=keep, dropped=dropped, torn=torn, formats=formats)


def rewrite(
    inputs: Sequence[Path],
    selection: Selection,
    output: Path,
    *,
    temp: Path,
    ordered: bool = False,
    run_bytes: int = RUN_BYTES,
) -> int:
    """Pass two: the kept lines written to `temp`, compressed as `output`'s name says,
    and renamed over `output`. Returns the number of lines written."""
    lines = kept_lines(inputs, selection, ordered=ordered, run_bytes=run_bytes)
    with atomic.replace(output, temp=temp) as dst:
        return write_lines(dst, lines, codec_for(output))


def kept_lines(
    inputs: Sequence[Path], selection: Selection, *, ordered: bool = False, run_bytes: int = RUN_BYTES
) -> Iterator[bytes]:
    """The lines `selection` keeps, in the inputs' order or, `ordered`, in input line
    order (an external sort: memory bounded by `run_bytes`)."""
    lines = _kept(inputs, selection.keep)
    if ordered:
        lines = sorted_lines(((_input_line(raw), raw) for raw in lines), run_bytes=run_bytes)
    return lines


def compact(path: Path, *, ordered: bool = False) -> int:
    """Rewrite a run's output with only the newest line of each id (and with `ordered`,
    in input order), atomically through ``OUTPUT.compacting``. A crash before the rename
    leaves the old file (old lines and new) and a stray temporary, which the next
    compaction replaces. Returns the number of lines dropped."""
    cut_torn(path)
    chosen = select([path])
    if chosen.dropped or ordered:
        rewrite([path], chosen, path, temp=sidecars.compacting(path), ordered=ordered)
    return chosen.dropped


def _refuse_torn_block(path: Path) -> None:
    if torn_end(path):
        raise ConfigError(
            f"{path} ends in a torn or damaged compressed block (a killed run leaves one): "
            "rerun the run that wrote it to cut it off, then try again"
        )


def _kept(inputs: Sequence[Path], keep: Bitmap) -> Iterator[bytes]:
    """The kept lines, in the inputs' order."""
    number = 0
    for path in inputs:
        with open_lines(path) as f:
            for raw in f:
                if raw[-1:] != b"\n":
                    break
                if number in keep:
                    yield raw
                number += 1


def _input_line(raw: bytes) -> int:
    """The sort key of a kept line: the input line number ours carries; LAST for a line
    that carries none, and for every line not ours."""
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return LAST
    line = input_line_of(rec) if read_line(rec) is not None else None
    return LAST if line is None else min(line, LAST)
