"""The OpenAI wire shapes the fake server's endpoints share: error bodies and the
exception that carries one, list pages with cursors, object ids, query parameters."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import orjson
from aiohttp import web

__all__ = ["JSON", "ApiError", "Reply", "error_body", "injected_error", "new_id", "page", "query_int"]

JSON = "application/json"


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    """An OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def injected_error(fault: int | str) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI error of an injected fault: an HTTP status, or ``quota``
    (a 429 for an exhausted quota); any other kind is a 500."""
    if fault == "quota":
        message = "You exceeded your current quota."
        return 429, {
            "message": message,
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    status = fault if isinstance(fault, int) else 500
    code = {429: "rate_limit_exceeded", 401: "invalid_api_key"}.get(status)
    return status, {"message": f"Injected fault {fault}", "type": "server_error", "param": None, "code": code}


class ApiError(Exception):
    """A request the API refuses: raised by an endpoint, answered by the server's
    :meth:`~llmbatch.testing.server.FakeServer.handle` as an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.param = param

    def body(self) -> bytes:
        return error_body(self.message, self.kind, self.code, self.param)


class Reply(Protocol):
    """The server's answer maker: a response counted in ``ServerStats.by_status``."""

    def __call__(
        self,
        status: int,
        body: bytes,
        headers: list[tuple[str, str]] | None = None,
        *,
        content_type: str = JSON,
    ) -> web.Response: ...


def new_id(prefix: str) -> str:
    """An id the way OpenAI's look: ``file-…``, ``batch_…``, ``batch_req_…``."""
    return prefix + uuid.uuid4().hex[:24]


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high], or a 400."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, f"Invalid '{name}': expected an integer from {low} to {high}.", param=name)
    return value


def page(objects: Sequence[dict[str, Any]], *, limit: int, after: str | None) -> dict[str, Any]:
    """One page of an OpenAI list: the objects after the one whose id is ``after`` (in
    the order given), at most ``limit`` of them, and whether more follow."""
    start = 0
    if after is not None:
        ids = [obj["id"] for obj in objects]
        if after not in ids:
            raise ApiError(400, f"Invalid 'after': no object with id '{after}'.", param="after")
        start = ids.index(after) + 1
    data = list(objects[start : start + limit])
    return {
        "object": "list",
        "data": data,
        "has_more": start + limit < len(objects),
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
