"""`llmbatch merge OUT... -o ALL`: outputs (the shards of one input, typically) joined
into one file with one line per custom_id.

The files count as given oldest first; the join is the rewrite a resume's compaction
does (`llmbatch.output.rewrite`: the newest line of an id wins, lines that are not
llmbatch output lines are kept as they are, a torn last line is skipped, as a rerun
would drop it; a compressed file with a torn last block is refused, naming it). All
the inputs must be of one format (Batch lines or merged rows). ``--ordered`` sorts the
lines by the input line number each carries, with bounded memory. Compressed outputs
are read as such (the merged file is written plain, or compressed as its own name
says). The output is written beside itself (``OUTPUT.merging``) and renamed into place,
so a merge that fails leaves no half file; every input and the output are locked as a
run locks its output (a shard still being written is refused, not half merged).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmbatch.app.checks import check_files
from llmbatch.files import sidecars
from llmbatch.files.locking import OutputLock
from llmbatch.files.ordering import RUN_BYTES
from llmbatch.output.rewrite import rewrite, select

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
    check_files(inputs, output, none="merge needs at least one file to merge")
    with contextlib.ExitStack() as stack:
        for path in dict.fromkeys(p.resolve() for p in [*inputs, output]):
            stack.enter_context(OutputLock(path))
        chosen = select(inputs)
        chosen.check_one_format("merge")
        written = rewrite(
            inputs, chosen, output, temp=sidecars.merging(output), ordered=ordered, run_bytes=run_bytes
        )
    return Merged(files=len(inputs), lines=written, dropped=chosen.dropped, torn=chosen.torn)
