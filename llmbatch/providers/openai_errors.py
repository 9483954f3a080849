"""The openai SDK's exceptions in our error tree: one table (`OUTCOMES`), used by the
live provider's SDK path (providers.openai) and the Files/Batches calls
(providers.openai_batches). Every class the SDK exports has a row of its own (a test
walks the SDK to hold us to it), so a new SDK class is a decision, not a fallthrough.

    APIStatusError (and its 9 subclasses)  by the response's status: core.http's
                                           error_for_status (Retry-After kept)
    APIConnectionError, APITimeoutError    TransientError by cause: dns, tls,
                                           connection_refused, connect, connection, timeout
    APIResponseValidationError             TransientError malformed_response
    APIError (bare: an error event)        TransientError api_error
    OpenAIError, SubjectTokenProviderError AuthError credentials: the client cannot
    and the module client's ambiguity      authenticate, nothing else will succeed
    LengthFinishReasonError                PermanentError truncated
    ContentFilterFinishReasonError         PermanentError refused
    WebSocketConnectionClosedError         TransientError connection
    WebSocketQueueFullError                TransientError queue_full

A server or proxy may quote our Authorization header back; the key is taken out of
every message (and of the body the message is read from) before it can reach the
output, the batch state or the terminal.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Callable, Iterator

import aiohttp
import httpx2
import openai
import orjson

from llmbatch.core.errors import AuthError, PermanentError, ProviderError, TransientError
from llmbatch.core.http import error_for_status

__all__ = ["OUTCOMES", "REDACTED", "connection_error", "redact", "secret_of", "translate"]

REDACTED = b"[redacted]"
# Shorter keys are no secret worth hiding, and replacing them would mangle answers.
_MIN_SECRET = 8


def secret_of(api_key: object) -> bytes:
    """What to take out of every text from the server: the key, as it is sent."""
    return api_key.encode() if isinstance(api_key, str) and len(api_key) >= _MIN_SECRET else b""


def redact(raw: bytes, secret: bytes) -> bytes:
    """`raw` without the key."""
    return raw.replace(secret, REDACTED) if secret and secret in raw else raw


def _text(text: str, secret: bytes) -> str:
    return redact(text.encode(), secret).decode() if secret else text


# --- connections ------------------------------------------------------------------


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it was raised from, outermost first (cycles cut)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if isinstance(current, aiohttp.ClientConnectorError) and current.os_error is not None:
            yield current.os_error
        current = current.__cause__ or current.__context__


# The SDK's aiohttp transport calls every aiohttp connection error a ConnectTimeout, and
# httpx2 wraps the OS error in two layers of its own: the deepest cause says what
# happened, so the cause classes are looked for first, in this order.
_DNS = (socket.gaierror, aiohttp.ClientConnectorDNSError)
_TLS = (ssl.SSLError, aiohttp.ClientSSLError, aiohttp.ClientConnectorCertificateError)
_CONNECT = (
    httpx2.ConnectError,
    httpx2.ProxyError,
    httpx2.UnsupportedProtocol,
    aiohttp.ClientConnectorError,
    aiohttp.ClientProxyConnectionError,
)
_DROPPED = (
    ConnectionError,  # reset, aborted, broken pipe (ConnectionRefusedError is told apart first)
    httpx2.NetworkError,
    httpx2.RemoteProtocolError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientOSError,
)
_TIMEOUT = (TimeoutError, httpx2.TimeoutException, openai.APITimeoutError)


def _refused(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED
    )


def _detail(causes: list[BaseException]) -> BaseException:
    """The cause worth quoting: aiohttp's (it names the host), else the deepest that
    says anything (the SDK's own is 'Connection error.', httpx2's often empty)."""
    for cause in causes:
        if isinstance(cause, aiohttp.ClientError) and str(cause):
            return cause
    return next((c for c in reversed(causes) if str(c)), causes[0])


def connection_error(
    exc: BaseException, secret: bytes = b"", *, timeout: float | None = None
) -> TransientError:
    """A request that got no answer, by its cause: the first of each code is told to the
    user, and a run whose every attempt fails to connect stops (core.errors'
    CONNECT_CODES). Takes the SDK's APIConnectionError and APITimeoutError, and the
    aiohttp errors of the live provider's own session; `timeout` is the one that ran out."""
    causes = list(_causes(exc))
    detail = _detail(causes)
    said = _text(f"{type(detail).__name__}: {detail}", secret)
    if any(isinstance(c, _DNS) for c in causes):
        return TransientError(f"cannot resolve the host: {said}", code="dns")
    if any(isinstance(c, _TLS) for c in causes):
        return TransientError(f"TLS failed: {said}", code="tls")
    if any(_refused(c) for c in causes):
        return TransientError(f"connection refused: {said}", code="connection_refused")
    if any(isinstance(c, _CONNECT) for c in causes):
        return TransientError(f"cannot connect: {said}", code="connect")
    if any(isinstance(c, _DROPPED) for c in causes):
        return TransientError(f"connection failed: {said}", code="connection")
    if any(isinstance(c, _TIMEOUT) for c in causes):
        within = f"within {timeout:g}s" if timeout else "in time"
        return TransientError(f"no answer {within}", code="timeout")
    return TransientError(f"connection failed: {said}", code="connection")


# --- the table ----------------------------------------------------------------------


def _content(exc: openai.APIStatusError) -> bytes:
    """The error response's body; what the SDK parsed of it when it was never read."""
    try:
        return exc.response.content
    except httpx2.ResponseNotRead:
        return orjson.dumps(exc.body) if exc.body is not None else exc.message.encode()


def _by_status(exc: openai.OpenAIError, secret: bytes) -> ProviderError:
    assert isinstance(exc, openai.APIStatusError)
    r = exc.response
    return error_for_status(r.status_code, redact(_content(exc), secret), r.headers)


def _connection(exc: openai.OpenAIError, secret: bytes) -> ProviderError:
    return connection_error(exc, secret)


def _transient(code: str) -> Callable[[openai.OpenAIError, bytes], ProviderError]:
    def outcome(exc: openai.OpenAIError, secret: bytes) -> ProviderError:
        return TransientError(_text(f"{type(exc).__name__}: {exc}", secret), code=code)

    return outcome


def _permanent(code: str) -> Callable[[openai.OpenAIError, bytes], ProviderError]:
    def outcome(exc: openai.OpenAIError, secret: bytes) -> ProviderError:
        return PermanentError(_text(f"{type(exc).__name__}: {exc}", secret), code=code)

    return outcome


def _credentials(exc: openai.OpenAIError, secret: bytes) -> ProviderError:
    return AuthError(_text(f"the openai client cannot authenticate: {exc}", secret), code="credentials")


Outcome = Callable[[openai.OpenAIError, bytes], ProviderError]

OUTCOMES: dict[type[openai.OpenAIError], Outcome] = {
    # The status decides, not the class: the SDK names only some statuses, and
    # InternalServerError is every 5xx.
    openai.APIStatusError: _by_status,
    openai.BadRequestError: _by_status,
    openai.AuthenticationError: _by_status,
    openai.OAuthError: _by_status,
    openai.PermissionDeniedError: _by_status,
    openai.NotFoundError: _by_status,
    openai.ConflictError: _by_status,
    openai.UnprocessableEntityError: _by_status,
    openai.RateLimitError: _by_status,
    openai.InternalServerError: _by_status,
    # No answer: the cause decides (the aiohttp transport calls them all timeouts).
    openai.APIConnectionError: _connection,
    openai.APITimeoutError: _connection,
    # A 2xx the SDK cannot read (a proxy's page): asked again, as a malformed answer is.
    openai.APIResponseValidationError: _transient("malformed_response"),
    # An error event in a stream, with no status: the server failed mid-answer.
    openai.APIError: _transient("api_error"),
    # The SDK's own client refused to send: no key, a token provider that failed.
    openai.OpenAIError: _credentials,
    openai._exceptions.SubjectTokenProviderError: _credentials,
    openai._AmbiguousModuleClientUsageError: _credentials,
    # Raised by the SDK's parse helpers (we never call them): the answer is the
    # request's, and the same request gets it again.
    openai.LengthFinishReasonError: _permanent("truncated"),
    openai.ContentFilterFinishReasonError: _permanent("refused"),
    # The Realtime API's websocket (we do not use it).
    openai.WebSocketConnectionClosedError: _transient("connection"),
    openai.WebSocketQueueFullError: _transient("queue_full"),
}


def translate(exc: openai.OpenAIError, secret: bytes = b"") -> ProviderError:
    """`exc` as one of ours, the key (`secret`) out of its message. A class of a newer
    SDK with no row takes its nearest ancestor's."""
    for cls in type(exc).__mro__:
        outcome = OUTCOMES.get(cls)
        if outcome is not None:
            return outcome(exc, secret)
    raise AssertionError("unreachable: OpenAIError has a row")  # pragma: no cover
