"""What the fake Anthropic API (:mod:`llmbatch.testing.anthropic`) says on the wire and
counts: Anthropic's error bodies, its RFC 3339 times, a scripted fault, the counters."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["FAULT_KINDS", "AnthropicStats", "Fault", "error", "rfc3339"]


def error(kind: str, message: str) -> bytes:
    """Anthropic's error body: ``{"type": "error", "error": {"type", "message"}}``."""
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def rfc3339(when: dt.datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


class Fault(Exception):
    """A scripted HTTP status (``@fake {"fail": [529]}``) instead of an answer."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


# The error type Anthropic names each status by.
FAULT_KINDS = {
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
    400: "invalid_request_error",
}


@dataclass(slots=True)
class AnthropicStats:
    """What the server saw: requests to /v1/messages, their answers, 429s and 529s, the
    loop time of each admitted request, batches created and their requests."""

    requests: int = 0
    answered: int = 0
    http_429: int = 0
    http_529: int = 0
    admitted_at: list[float] = field(default_factory=list)
    batches_created: int = 0
    batch_requests: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    batch_ids: list[frozenset[str]] = field(default_factory=list)  # each batch's custom_ids
    creates_started: int = 0
    retrieves: int = 0
    results_started: int = 0
    api_keys: set[str] = field(default_factory=set)
    versions: set[str] = field(default_factory=set)
    bodies: list[dict[str, Any]] = field(default_factory=list)  # the /v1/messages bodies, in order
    bad_blocks: list[str] = field(default_factory=list)  # why image/document blocks were refused
    usages: list[dict[str, Any]] = field(default_factory=list)  # the usage of each answer given
