"""A test server served from a background thread with an event loop of its own: what the
fake OpenAI server (`llmbatch.testing.server`) and the fake Anthropic API
(`llmbatch.testing.anthropic`) share. A subclass gives `serve` (start listening) and
`close` (stop listening, end what is in flight); `start` / `stop` or ``with`` run it."""

from __future__ import annotations

import asyncio
import threading
from typing import Literal, Self

__all__ = ["LOOP_KINDS", "InThread", "LoopKind", "new_event_loop"]

LoopKind = Literal["auto", "uvloop", "asyncio"]
"""The event loop a server of its own runs on: ``auto`` is uvloop when it is installed."""
LOOP_KINDS: tuple[LoopKind, ...] = ("auto", "uvloop", "asyncio")


def new_event_loop(kind: LoopKind = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop of that kind (``uvloop`` raises ImportError when it is missing)."""
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class InThread:
    """Serving from a background thread; `start` raises what `serve` raised."""

    loop_kind: LoopKind = "asyncio"
    thread_name = "fake-server"
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    async def serve(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        """Serve from a background thread with its own event loop."""
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            try:
                loop = new_event_loop(self.loop_kind)
            except BaseException as exc:
                failed.append(exc)
                ready.set()
                return
            self._loop = loop
            try:
                loop.run_until_complete(self.serve())
            except BaseException as exc:
                failed.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.close())
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:  # gather() of nothing would look for this thread's (absent) current loop
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        ready.wait(10)
        if failed:
            self._thread = None
            raise failed[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
