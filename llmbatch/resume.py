"""What an existing output already holds, remembered compactly.

A million ids as Python strings in a set would cost over 100 MB; here each id is a
64-bit hash in an open-addressing table backed by one `array('q')`: about 16 bytes an
id at worst. Python's string hash is salted per process, which is fine: the table
lives and dies with the run that fills it. A collision (about 1 in 10^7 for a million
ids) would skip one item; the summary's counts would show it.
"""

from __future__ import annotations

from array import array
from pathlib import Path

import orjson

from llmbatch.jsonl import drop_torn_tail, read_lines

__all__ = ["IdSet", "done_ids"]

_EMPTY = 0
_MIN_SLOTS = 1 << 10


class IdSet:
    """A set of strings that stores only their 64-bit hashes."""

    __slots__ = ("_count", "_mask", "_slots")

    def __init__(self) -> None:
        self._slots = array("q", bytes(8 * _MIN_SLOTS))
        self._mask = _MIN_SLOTS - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @staticmethod
    def _key(text: str) -> int:
        return hash(text) or 1  # 0 marks an empty slot

    def __contains__(self, text: object) -> bool:
        if not isinstance(text, str) or not self._count:
            return False
        key = self._key(text)
        slots, mask = self._slots, self._mask
        i = key & mask
        while True:
            v = slots[i]
            if v == key:
                return True
            if v == _EMPTY:
                return False
            i = (i + 1) & mask

    def add(self, text: str) -> bool:
        """Add; True when it was not there before."""
        if (self._count + 1) * 4 > len(self._slots) * 3:
            self._grow()
        key = self._key(text)
        slots, mask = self._slots, self._mask
        i = key & mask
        while True:
            v = slots[i]
            if v == key:
                return False
            if v == _EMPTY:
                slots[i] = key
                self._count += 1
                return True
            i = (i + 1) & mask

    def _grow(self) -> None:
        old = self._slots
        size = len(old) * 2
        self._slots = slots = array("q", bytes(8 * size))
        self._mask = mask = size - 1
        for key in old:
            if key != _EMPTY:
                i = key & mask
                while slots[i] != _EMPTY:
                    i = (i + 1) & mask
                slots[i] = key


def done_ids(output: Path) -> IdSet:
    """The custom_ids already written to `output` (a torn last line is dropped first)."""
    ids = IdSet()
    if not output.exists():
        return ids
    drop_torn_tail(output)
    for _, raw in read_lines(output):
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            cid = rec.get("custom_id", rec.get("llm_custom_id"))
            if isinstance(cid, str):
                ids.add(cid)
    return ids
