"""A bounded look-ahead that sends requests of the same prompt cache key close together.

A provider's prompt cache serves a prefix only while it is warm on the machine the key
routes to; an input that interleaves keys (bodies carrying their own
``prompt_cache_key``: several system prompts, several templates' Batch lines) sends each
key's requests far apart, and a busy cache has dropped the prefix by the next one.
`grouped` reads up to `DEFAULT_LOOKAHEAD` items ahead and hands them on a key at a time:
the key of the oldest item waiting, drained while items of it are buffered, then the
next. Once the look-ahead's size in items has been read after an item still waiting,
it is handed on (whatever the key): no item moves later by more than about twice the
look-ahead, and memory stays bounded by it.

It costs nothing while the input holds at most one key (every template run: all of its
items carry the same key): items pass straight through until a second key shows up.
Bad lines (rejects) are never held. The output order changes only among items a few
hundred lines apart; ``--ordered`` still puts the output file in input order (the
compaction at the end), and a run writing ``--ordered`` to standard output gets no
look-ahead (its reorder buffer is bounded by the window, which the look-ahead must not
outgrow).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import TypeVar

from llmbatch.core.cachekey import CACHE_KEY
from llmbatch.core.values import Request

__all__ = ["DEFAULT_LOOKAHEAD", "grouped"]

DEFAULT_LOOKAHEAD = 1024  # items read ahead at most
T = TypeVar("T")


def grouped(items: Iterable[T], size: int = DEFAULT_LOOKAHEAD) -> Iterator[T]:
    """`items`, with requests of the same prompt cache key brought together (see the
    module docstring)."""
    it = iter(items)
    first: object = None
    for item in it:
        if isinstance(item, Request):
            key = item.body.get(CACHE_KEY)
            if key is not None:
                if first is None:
                    first = key
                elif key != first:
                    yield from _grouping(chain((item,), it), size)
                    return
        yield item


def _grouping(it: Iterator[T], size: int) -> Iterator[T]:
    # Per key, its items waiting in arrival order with their read number; the dict's
    # order is that of each key's oldest item waiting (a key emptied is removed).
    waiting: dict[object, deque[tuple[int, T]]] = {}
    held = 0
    read = 0
    current: object = None
    exhausted = False
    while True:
        while held < size and not exhausted:
            try:
                item = next(it)
            except StopIteration:
                exhausted = True
                break
            if not isinstance(item, Request):
                yield item  # a reject: never held
                continue
            key = item.body.get(CACHE_KEY)
            queue = waiting.get(key)
            if queue is None:
                queue = waiting[key] = deque()
            queue.append((read, item))
            read += 1
            held += 1
        if not held:
            return
        oldest_key = next(iter(waiting))
        if current not in waiting or read - waiting[oldest_key][0][0] >= size:
            current = oldest_key
        queue = waiting[current]
        _, item = queue.popleft()
        if not queue:
            del waiting[current]
        held -= 1
        yield item
