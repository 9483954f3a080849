"""The aiohttp parts the HTTP providers (OpenAI's fast path, Anthropic) share: a session
sized to the concurrency, and one `ClientTimeout` per distinct number of seconds."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping

import aiohttp

__all__ = ["Timeouts", "open_session"]


def open_session(concurrency: int, headers: Mapping[str, str]) -> aiohttp.ClientSession:
    """A session of at most `concurrency` connections that sends `headers` on every request."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        # The headers as the session's own: aiohttp merges per-request headers on every
        # call, session headers once.
        headers=dict(headers),
        # aiohttp looks up proxies and .netrc in a thread on every request when trust_env
        # is on; pay that only when the environment names a proxy.
        trust_env=any(scheme != "no" for scheme in urllib.request.getproxies()),
    )


class Timeouts:
    """`ClientTimeout`s made once per number of seconds (a request each is many)."""

    def __init__(self) -> None:
        self._made: dict[float | None, aiohttp.ClientTimeout] = {}

    def __call__(self, seconds: float | None) -> aiohttp.ClientTimeout:
        made = self._made.get(seconds)
        if made is None:
            made = self._made[seconds] = aiohttp.ClientTimeout(total=seconds)
        return made
