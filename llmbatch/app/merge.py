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

from llmbatch.core.errors import ConfigError
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
    _check(inputs, output)
    with contextlib.ExitStack() as stack:
        for path in dict.fromkeys(p.resolve() for p in [*inputs, output]):
            stack.enter_context(OutputLock(path))
        chosen = select(inputs)
        if len(chosen.formats) > 1:
            raise ConfigError(
                f"{chosen.formats['batch']} holds Batch lines and {chosen.formats['merged']} merged rows: "
                "merge files of one format"
            )
        written = rewrite(
            inputs, chosen, output, temp=sidecars.merging(output), ordered=ordered, run_bytes=run_bytes
        )
    return Merged(files=len(inputs), lines=written, dropped=chosen.dropped, torn=chosen.torn)


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
