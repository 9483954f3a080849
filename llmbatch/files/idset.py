"""A set of strings remembered by their hashes only: ids by the million, compactly.

A million ids as Python strings in a set would cost over 100 MB; here each id is a
64-bit hash in an open-addressing table backed by one `array('q')`: about 11 bytes an
id when the count is known up front, 16 at worst. Python's string hash is salted per
process, which is fine: the table lives and dies with the run that fills it. A
collision (about 1 in 10^7 for a million ids) would skip one item; the summary's
counts would show it.
"""

from __future__ import annotations

from array import array

__all__ = ["IdSet"]

_EMPTY = 0
_MIN_SLOTS = 1 << 10
_MAX_LOAD = 0.75


class IdSet:
    """A set of strings that stores only their hashes: 64 bits by default, so a false
    "already there" is about one in 10^7 for a million ids.

    With ``bits=32`` it takes half the memory, but membership only means *maybe*
    (about a hundred false hits per million ids): callers must confirm a hit another
    way, as duplicate detection does by a second look at the input.

    Give `expected` (the input's line count) and the table is allocated once at its
    final size (~11 bytes an id at 64 bits): growing by doubling would briefly hold both.
    """

    __slots__ = ("_count", "_mask", "_size", "_slots")

    def __init__(self, expected: int = 0, *, bits: int = 64) -> None:
        self._size = max(_MIN_SLOTS, int(expected / _MAX_LOAD) + 1)
        typecode = {64: "q", 32: "I"}[bits]
        self._slots = array(typecode, bytes(array(typecode).itemsize * self._size))
        self._mask = -1 if bits == 64 else 0xFFFFFFFF
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _key(self, text: str) -> int:
        return (hash(text) & self._mask) or 1  # 0 marks an empty slot

    def _probe(self, key: int) -> int:
        """The slot that holds `key`, or the empty one where it would go."""
        slots, size = self._slots, self._size
        i = key % size
        while True:
            v = slots[i]
            if v in (key, _EMPTY):
                return i
            i = i + 1 if i + 1 < size else 0

    def __contains__(self, text: object) -> bool:
        if not isinstance(text, str) or not self._count:
            return False
        key = self._key(text)
        return self._slots[self._probe(key)] == key

    @property
    def capacity(self) -> int:
        """Slots in the table: indexes from `locate` are below this."""
        return self._size

    def locate(self, text: str, *, add: bool = False) -> int:
        """The slot of `text` (added first when `add`), or -1 when it is not there.
        Slots let a caller keep values beside the table in arrays of `capacity`; they
        move when the table grows, so such a table must be made big enough up front."""
        key = self._key(text)
        i = self._probe(key)
        if self._slots[i] == key:
            return i
        if not add:
            return -1
        if self._count + 1 > self._size * _MAX_LOAD:
            raise OverflowError("the table is full: make it for more ids")
        self._slots[i] = key
        self._count += 1
        return i

    def add(self, text: str) -> bool:
        """Add; True when it was not there before."""
        if self._count + 1 > self._size * _MAX_LOAD:
            self._grow()
        key = self._key(text)
        i = self._probe(key)
        if self._slots[i] == key:
            return False
        self._slots[i] = key
        self._count += 1
        return True

    def _grow(self) -> None:
        old = self._slots
        self._size = size = self._size * 2
        self._slots = slots = array(old.typecode, bytes(old.itemsize * size))
        for key in old:
            if key != _EMPTY:
                i = key % size
                while slots[i] != _EMPTY:
                    i = i + 1 if i + 1 < size else 0
                slots[i] = key
