"""The one map from the openai SDK's exceptions to ours: every exception class the SDK
exports has a deliberate outcome, the server's delay is kept, the key never survives in
a message, and connection failures are told apart by their cause, through the SDK's
httpx2 transport and its aiohttp one alike."""

from __future__ import annotations

import asyncio
import inspect
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai
import openai._exceptions
import orjson
import pytest
from openai.types.chat import ChatCompletion

from llmbatch.core.errors import (
    CONNECT_CODES,
    AuthError,
    PermanentError,
    ProviderError,
    RateLimited,
    TransientError,
)
from llmbatch.providers.openai_errors import OUTCOMES, connection_error, secret_of, translate

KEY = "sk-test-SECRET-0a1b2c3d4e5f6789"
SECRET = secret_of(KEY)
REQUEST = httpx2.Request(
    "POST", "https://api.example.test/v1/batches", headers={"Authorization": f"Bearer {KEY}"}
)


def sdk_exception_classes() -> set[type[openai.OpenAIError]]:
    """Every class in the openai package's namespace (and its exceptions module) that
    is an OpenAIError: what a call through the SDK can raise at us."""
    found: set[type[openai.OpenAIError]] = set()
    for module in (openai, openai._exceptions):
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, openai.OpenAIError):
                found.add(obj)
    return found


def response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx2.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx2.Response(status, content=content, headers=headers, request=REQUEST)


def quoting(status: int, **headers: str) -> httpx2.Response:
    """An OpenAI error body that quotes our Authorization header back."""
    message = f"rejected: Authorization: Bearer {KEY}"
    return response(status, {"error": {"message": message, "type": "server_error", "code": None}}, headers)


def status_error(cls: type[openai.APIStatusError], status: int, **headers: str) -> openai.APIStatusError:
    r = quoting(status, **headers)
    return cls(f"Error code: {status} - quoting {KEY}", response=r, body=orjson.loads(r.content)["error"])


def with_cause(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


def completion() -> ChatCompletion:
    return ChatCompletion.model_construct(id="c", choices=[], created=0, model="m", object="chat.completion")


# Each exported class: an instance as the SDK builds it, and (our class, code) it becomes.
CASES: dict[str, tuple[Callable[[], openai.OpenAIError], type[ProviderError], str]] = {
    "APIStatusError": (lambda: status_error(openai.APIStatusError, 418), PermanentError, "server_error"),
    "BadRequestError": (lambda: status_error(openai.BadRequestError, 400), PermanentError, "server_error"),
    "AuthenticationError": (lambda: status_error(openai.AuthenticationError, 401), AuthError, "server_error"),
    "OAuthError": (
        lambda: openai.OAuthError(
            response=response(401, {"error": "invalid_grant", "error_description": f"bad {KEY}"}),
            body={"error": "invalid_grant", "error_description": f"bad {KEY}"},
        ),
        AuthError,
        "auth",
    ),
    "PermissionDeniedError": (
        lambda: status_error(openai.PermissionDeniedError, 403),
        AuthError,
        "server_error",
    ),
    "NotFoundError": (lambda: status_error(openai.NotFoundError, 404), PermanentError, "server_error"),
    "ConflictError": (lambda: status_error(openai.ConflictError, 409), TransientError, "http_409"),
    "UnprocessableEntityError": (
        lambda: status_error(openai.UnprocessableEntityError, 422),
        PermanentError,
        "server_error",
    ),
    "RateLimitError": (
        lambda: status_error(openai.RateLimitError, 429, **{"retry-after-ms": "1500"}),
        RateLimited,
        "rate_limited",
    ),
    "InternalServerError": (
        lambda: status_error(openai.InternalServerError, 503),
        TransientError,
        "http_503",
    ),
    "APIConnectionError": (
        lambda: with_cause(
            openai.APIConnectionError(request=REQUEST), httpx2.ConnectError(f"refused {KEY}", request=REQUEST)
        ),
        TransientError,
        "connect",
    ),
    "APITimeoutError": (
        lambda: with_cause(openai.APITimeoutError(request=REQUEST), httpx2.ReadTimeout("", request=REQUEST)),
        TransientError,
        "timeout",
    ),
    "APIResponseValidationError": (
        lambda: openai.APIResponseValidationError(response(200, b"<html>proxy</html>"), body=f"{KEY}"),
        TransientError,
        "malformed_response",
    ),
    "APIError": (
        lambda: openai.APIError(f"An error occurred during streaming {KEY}", REQUEST, body=None),
        TransientError,
        "api_error",
    ),
    "OpenAIError": (
        lambda: openai.OpenAIError(f"Failed to resolve a bearer credential ({KEY})"),
        AuthError,
        "credentials",
    ),
    "SubjectTokenProviderError": (
        lambda: openai._exceptions.SubjectTokenProviderError(f"no token for {KEY}", response=quoting(500)),
        AuthError,
        "credentials",
    ),
    "_AmbiguousModuleClientUsageError": (
        lambda: openai._AmbiguousModuleClientUsageError(),
        AuthError,
        "credentials",
    ),
    "LengthFinishReasonError": (
        lambda: openai.LengthFinishReasonError(completion=completion()),
        PermanentError,
        "truncated",
    ),
    "ContentFilterFinishReasonError": (
        lambda: openai.ContentFilterFinishReasonError(completion=completion()),
        PermanentError,
        "refused",
    ),
    "WebSocketConnectionClosedError": (
        lambda: openai.WebSocketConnectionClosedError(f"closed {KEY}", unsent_messages=[KEY]),
        TransientError,
        "connection",
    ),
    "WebSocketQueueFullError": (
        lambda: openai.WebSocketQueueFullError("queue full"),
        TransientError,
        "queue_full",
    ),
}


def test_every_exception_class_the_sdk_exports_has_a_row_and_a_deliberate_outcome():
    """Walking the openai package finds no exception class without its own row in the
    map (none reaches an outcome through its base class) and none this test does not
    know the outcome of: a new SDK class fails here until someone decides about it."""
    found = sdk_exception_classes()
    assert len(found) >= 20  # the walk works: the SDK has about twenty
    unmapped = {cls.__qualname__ for cls in found} - {cls.__qualname__ for cls in OUTCOMES}
    assert not unmapped, f"openai exception classes with no row in OUTCOMES: {sorted(unmapped)}"
    untested = {cls.__qualname__ for cls in found} - set(CASES)
    assert not untested, f"openai exception classes with no case here: {sorted(untested)}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_sdk_exception_becomes_ours_with_the_key_out_of_its_message(name):
    """Built as the SDK builds it (real httpx2 requests and responses, the key quoted in
    the body, the message or the cause), each class becomes the error DESIGN's table
    says, and the key is nowhere in what we say."""
    make, kind, code = CASES[name]
    exc = make()
    assert type(exc).__qualname__ == name
    err = translate(exc, SECRET)
    assert type(err) is kind, (name, err)
    assert err.code == code, (name, err)
    assert KEY not in str(err)
    assert KEY not in repr(err.args)


def test_a_rate_limit_keeps_the_server_delay_and_an_exhausted_quota_stops():
    """A 429 keeps the server's retry-after (ms or seconds) on the error; a 429 that
    says insufficient_quota is an auth stop, not a wait."""
    err = translate(status_error(openai.RateLimitError, 429, **{"retry-after-ms": "1500"}), SECRET)
    assert isinstance(err, RateLimited) and err.retry_after == pytest.approx(1.5)
    err = translate(status_error(openai.RateLimitError, 429, **{"retry-after": "7"}), SECRET)
    assert isinstance(err, RateLimited) and err.retry_after == pytest.approx(7.0)
    body = {"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota"}}
    quota = openai.RateLimitError("quota", response=response(429, body), body=body["error"])
    assert type(translate(quota, SECRET)) is AuthError
    assert translate(quota, SECRET).code == "insufficient_quota"


def test_a_status_error_whose_body_was_never_read_is_read_from_what_the_sdk_parsed():
    """A streamed answer's error (the download of a result file) whose body the SDK did
    not keep: its parsed body still gives the message, minus the key."""
    r = httpx2.Response(500, stream=httpx2.ByteStream(b"unread"), request=REQUEST)
    exc = openai.InternalServerError("Error code: 500", response=r, body={"message": f"down {KEY}"})
    err = translate(exc, SECRET)
    assert type(err) is TransientError and err.code == "http_500"
    assert "down [redacted]" in str(err)


# --- real connection failures on loopback ---------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def rude_server() -> Iterator[Callable[[str], int]]:
    """`rude_server(kind)`: a loopback port whose server resets every connection
    ("reset") or never answers ("hang")."""
    sockets: list[socket.socket] = []

    def start(kind: str) -> int:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        sockets.append(listener)

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                sockets.append(conn)
                if kind == "reset":
                    conn.recv(1024)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    conn.close()

        threading.Thread(target=serve, daemon=True).start()
        return int(listener.getsockname()[1])

    yield start
    for s in sockets:
        s.close()


@pytest.mark.parametrize("transport", ["httpx2", "aiohttp"])
@pytest.mark.parametrize(
    ("kind", "code"),
    [("refused", "connection_refused"), ("dns", "dns"), ("reset", "connection"), ("hang", "timeout")],
)
def test_a_failed_connection_is_told_by_its_cause_through_either_sdk_transport(
    rude_server, transport, kind, code
):
    """A Batch API call through the SDK to a closed port, a host that does not resolve,
    a server that resets the connection and one that never answers: each gets the code
    of its cause (the SDK's aiohttp transport calls them all timeouts), and a closed
    port or an unknown host counts as connecting to nothing."""
    url = {
        "refused": lambda: f"http://127.0.0.1:{free_port()}/v1",
        "dns": lambda: "http://no-such-host.invalid/v1",
        "reset": lambda: f"http://127.0.0.1:{rude_server('reset')}/v1",
        "hang": lambda: f"http://127.0.0.1:{rude_server('hang')}/v1",
    }[kind]()

    async def call() -> ProviderError:
        http = openai.DefaultAioHttpClient() if transport == "aiohttp" else None
        client = openai.AsyncOpenAI(api_key=KEY, base_url=url, max_retries=0, timeout=0.5, http_client=http)
        try:
            await client.batches.retrieve("batch_1")
        except openai.OpenAIError as exc:
            return translate(exc, SECRET)
        finally:
            await client.close()
        raise AssertionError("the call succeeded")

    err = asyncio.run(call())
    assert type(err) is TransientError
    assert err.code == code, str(err)
    assert (err.code in CONNECT_CODES) == (kind in ("refused", "dns"))


def test_aiohttp_errors_of_the_live_session_are_told_by_the_same_rules():
    """The live provider's own aiohttp errors go through the same classification."""
    import aiohttp

    key = aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None)
    refused = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connect call failed"))
    assert connection_error(refused).code == "connection_refused"
    assert connection_error(aiohttp.ServerDisconnectedError()).code == "connection"
    assert connection_error(aiohttp.ClientConnectorError(key, OSError(113, "No route"))).code == "connect"
