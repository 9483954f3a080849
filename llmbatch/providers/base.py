"""The one seam to the outside: a `Provider` turns a `Request` into a `Completion` or
raises one of :mod:`llmbatch.core.errors`' `ProviderError`s."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from llmbatch.core.values import Completion, Request

__all__ = ["DEFAULT_TIMEOUT", "Provider"]

# Seconds to wait for one answer.
DEFAULT_TIMEOUT = 120.0


@runtime_checkable
class Provider(Protocol):
    """Anything that can answer a request: OpenAI-compatible HTTP, the fake, a test double."""

    async def complete(self, request: Request, *, timeout: float | None = None) -> Completion: ...

    async def aclose(self) -> None: ...
