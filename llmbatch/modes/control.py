"""One run's control: why it stops, with which exit code, and who must hear of it.

Both modes and everything that waits in them (the engine's dispatcher and retry heap,
the limits' pause and permit queue, the Batch API mode's polling) go through one
`RunControl`, and so do the signals, the spending cap and a full disk. Of several stops
the one whose exit code wins (DESIGN's precedence: 2, 3, 4, 1, 0) is kept and the first
is told; each stop wakes every waiter registered with `on_stop`, so a Ctrl-C during a
429's pause or a backoff stops the run at once instead of after the wait. A second
signal aborts: `abort` cancels what is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from llmbatch.core.errors import Stop, worst
from llmbatch.core.stats import Stats

__all__ = ["RunControl"]


def _silent(_: str) -> None:
    return None


class RunControl:
    """The stop of one run. `stats.stop` is where the display and the summary read it;
    nothing else writes it."""

    def __init__(self, stats: Stats, *, log: Callable[[str], None] = _silent) -> None:
        self.stats = stats
        self.log = log
        self._on_stop: list[Callable[[], None]] = []
        self._on_abort: list[Callable[[], None]] = []
        self._event: asyncio.Event | None = None

    @property
    def stopping(self) -> bool:
        return self.stats.stop is not None

    @property
    def current(self) -> Stop | None:
        return self.stats.stop

    def stop(self, stop: Stop) -> None:
        """Stop dispatching everywhere; what is in flight finishes. The worst exit code
        wins; the first stop is told."""
        current = self.stats.stop
        if current is None:
            self.stats.stop = stop
            self.log(f"stopping: {stop.reason}")
        elif worst(current.exit_code, stop.exit_code) != current.exit_code:
            self.stats.stop = stop
        if self._event is not None:
            self._event.set()
        for wake in list(self._on_stop):
            wake()

    def abort(self) -> None:
        """Cancel what is in flight now (a second Ctrl-C). Written lines stay whole."""
        if self.stats.stop is None:
            self.stop(Stop("aborted"))
        for cancel in list(self._on_abort):
            cancel()

    def on_stop(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake` at every stop (it must not block). Returns what unregisters it."""
        self._on_stop.append(wake)
        return lambda: self._forget(self._on_stop, wake)

    def on_abort(self, cancel: Callable[[], None]) -> Callable[[], None]:
        """Call `cancel` when the run is aborted. Returns what unregisters it."""
        self._on_abort.append(cancel)
        return lambda: self._forget(self._on_abort, cancel)

    @staticmethod
    def _forget(callbacks: list[Callable[[], None]], callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            callbacks.remove(callback)

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less when the run stops meanwhile."""
        if self.stopping:
            return
        if self._event is None:
            self._event = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)
