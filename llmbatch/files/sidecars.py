"""The files llmbatch keeps beside an output, named in one place.

A run on ``OUTPUT`` may make ``OUTPUT.lock`` (one run at a time), ``OUTPUT.rejects.jsonl``
(bad input lines, unless ``--rejects`` names another file), ``OUTPUT.batches.db`` (the Batch
API mode's record, with SQLite's ``-wal`` and ``-shm`` beside it), ``OUTPUT.batches.spool/``
(Anthropic's Message Batches: each batch's requests, streamed inline at its create) and, for the moment of a
rewrite, ``OUTPUT.compacting`` (a resume's compaction) or ``OUTPUT.merging`` (``llmbatch
merge``). A newcomer, a cleanup or a test finds every name here.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["batch_spool", "batches", "beside", "compacting", "lock", "merging", "rejects", "sqlite_files"]


def beside(path: Path, suffix: str) -> Path:
    """`path` with `suffix` added to its name (``out.jsonl`` -> ``out.jsonl.lock``)."""
    return path.with_name(path.name + suffix)


def lock(output: Path) -> Path:
    """The lock a run holds on its output."""
    return beside(output, ".lock")


def rejects(output: Path) -> Path:
    """Where bad input lines go by default."""
    return beside(output, ".rejects.jsonl")


def batches(output: Path) -> Path:
    """The Batch API mode's record of an output's remote batches (SQLite)."""
    return beside(output, ".batches.db")


def batch_spool(output: Path) -> Path:
    """The folder of a Message Batches run's requests, one file per batch (Anthropic takes
    them inline: the create streams its file), with the intent of each create."""
    return beside(output, ".batches.spool")


def compacting(output: Path) -> Path:
    """The new file a compaction writes before renaming it over the output."""
    return beside(output, ".compacting")


def merging(output: Path) -> Path:
    """The new file a merge writes before renaming it over its output."""
    return beside(output, ".merging")


def sqlite_files(db: Path) -> tuple[Path, Path, Path]:
    """A SQLite database and the write-ahead log and shared-memory files beside it."""
    return db, Path(f"{db}-wal"), Path(f"{db}-shm")
