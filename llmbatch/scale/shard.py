"""`--shard K/N`: one of N processes that split one input between them, so that an
existing scheduler (a Kubernetes Indexed Job, a Slurm array, GNU parallel) fans the work
out and N processes with K = 0 .. N-1 cover the file exactly once.

An item belongs to the shard its custom_id hashes to: the first 8 bytes of the
BLAKE2b digest of the UTF-8 id, read big-endian, modulo N. That is the same on every
run, machine and Python version (Python's own `hash()` is salted per process), and any
other tool can reproduce it. A line that is not an item (a bad line, a duplicate id)
has no id to hash: its reject belongs to the shard of its line number, modulo N.

With N > 1 every shard writes its own output, so ``-o`` must name them apart with
``{shard}`` (``out-{shard}.jsonl``); ``{shard}`` is K in every per-output path (the
rejects, the summary JSON, the cache); what lives beside the output (the lock, the
Batch API record) follows the output's name already.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from llmbatch.core.errors import ConfigError

__all__ = ["PER_OUTPUT", "PLACEHOLDER", "Shard", "parse_shard", "shard_of"]

PLACEHOLDER = "{shard}"
# The settings that name a file of this run's own: {shard} expands in each.
PER_OUTPUT = ("output", "rejects", "summary_json", "cache", "metrics_file")


def shard_of(custom_id: str, n: int) -> int:
    """The shard (0 .. n-1) an item with this custom_id belongs to."""
    digest = hashlib.blake2b(custom_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` of `count` (`count` == 1: the whole input)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def has_id(self, custom_id: str) -> bool:
        """Whether the item with this custom_id is this shard's."""
        return self.count == 1 or shard_of(custom_id, self.count) == self.index

    def has_line(self, line: int) -> bool:
        """Whether a line that is not an item (a reject, a blank line) is this shard's."""
        return line % self.count == self.index


def parse_shard(text: str) -> Shard:
    """``"K/N"`` -> Shard, or a ConfigError saying what is expected."""
    k, sep, n = text.strip().partition("/")
    try:
        index, count = int(k), int(n)
    except ValueError:
        index = count = -1
    if not sep or count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard takes K/N with 0 <= K < N (e.g. 0/4), not {text!r}")
    return Shard(index, count)
