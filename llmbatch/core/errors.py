"""llmbatch's own errors, and the exit codes they end a run with. Foreign exceptions
(aiohttp, openai, OSError) are translated once, at the edge that meets them, so the
engine only ever sees these:

    LLMBatchError
    ├── ConfigError           bad flags, unreadable input, unwritable output: exit 2
    ├── InputError            one bad input line (carries its line number): a reject
    ├── ProviderError         a request did not produce an answer
    │   ├── TransientError    408, 409, 5xx, timeouts, resets: retry with backoff
    │   │   ├── RateLimited   429: retry after the server's delay, slow the run down
    │   │   └── CapacityError 429 "resource unavailable" (flex): retry, the pace kept
    │   ├── PermanentError    400, 404, 422: the request itself is wrong; fail the item
    │   └── AuthError         401, 403, insufficient_quota: stop dispatching, exit 3
    ├── ValidationFailed      an answer came back but is not usable: ask again
    └── Stop                  why a run ended early, with its exit code

The exit codes (DESIGN.md): when several apply, the first of 2, 3, 4, 1, 0 wins.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CONNECT_CODES",
    "AuthError",
    "CapacityError",
    "ConfigError",
    "ExitCode",
    "InputError",
    "LLMBatchError",
    "PermanentError",
    "ProviderError",
    "RateLimited",
    "Stop",
    "TransientError",
    "ValidationFailed",
    "worst",
]


class ExitCode(enum.IntEnum):
    OK = 0  # every item in scope has a valid line in the output
    FAILED = 1  # the run finished; some items are failed or invalid, or lines were rejected
    USAGE = 2  # nothing was sent: usage, input or configuration error, stale answers, locked
    STOPPED = 3  # stopped early (auth, quota, cap, signal, unreachable, disk): a rerun resumes
    PENDING = 4  # Batch API mode with --no-wait: batches still running, rerun to collect


# The first of these that applies is the run's exit code.
PRECEDENCE = (ExitCode.USAGE, ExitCode.STOPPED, ExitCode.PENDING, ExitCode.FAILED, ExitCode.OK)


def worst(*codes: ExitCode) -> ExitCode:
    """The code that wins when several apply (see PRECEDENCE)."""
    return min(codes, key=PRECEDENCE.index, default=ExitCode.OK)


class LLMBatchError(Exception):
    """Base of every error llmbatch raises on purpose."""


class ConfigError(LLMBatchError):
    """The run cannot start: a usage, input-file or output-file problem."""


class InputError(LLMBatchError):
    """One input line cannot become a request.

    `kind` names mistakes that, made by every row, are the command's fault rather
    than the rows' (no model anywhere, a template field no row has): the source turns
    those into one usage error instead of a reject per row."""

    def __init__(self, message: str, *, line: int = 0, kind: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.kind = kind


class ProviderError(LLMBatchError):
    """A request did not produce an answer. `code` is short and machine-readable."""

    code = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        if code:
            self.code = code
        self.headers: Mapping[str, str] = headers or {}


class TransientError(ProviderError):
    """Worth trying again later: overload, timeout, a dropped connection. `retry_after`
    is the delay in seconds the server asked for (429, 503 ...), if any."""

    code = "transient"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


# Codes of a TransientError that never reached a server: a run in which every attempt
# ends in one of these for --connect-grace seconds connects to nothing, and stops.
CONNECT_CODES = frozenset({"connection_refused", "dns", "tls", "connect"})


class RateLimited(TransientError):
    """The server said 429."""

    code = "rate_limited"


class CapacityError(TransientError):
    """A 429 that is not about our rate: the tier has no capacity for the request now
    (OpenAI's flex processing answers "Resource Unavailable"). Retried with backoff;
    slowing down would not help, so the pace is not lowered for it."""

    code = "capacity"


class PermanentError(ProviderError):
    """The request itself is wrong (400, 404, 422): retrying cannot help."""

    code = "invalid_request"


class AuthError(ProviderError):
    """Credentials or quota are the problem: nothing else will succeed either."""

    code = "auth"


class ValidationFailed(LLMBatchError):
    """The answer is not usable; `reason` says why (it is written to the output)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Stop(LLMBatchError):
    """Why a run stops before its end, and the exit code that says so.

    `interrupt` marks a stop asked for by a signal: a second one aborts."""

    def __init__(
        self, reason: str, *, exit_code: ExitCode = ExitCode.STOPPED, interrupt: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code
        self.interrupt = interrupt
