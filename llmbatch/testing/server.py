"""A fake OpenAI-compatible HTTP server for tests, benchmarks and trying llmbatch out.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) to serve
``POST /v1/chat/completions`` and ``POST /v1/embeddings`` quickly from one core, and
answers by the fake model's rules (:mod:`llmbatch.providers.script`), including the
``@fake`` scripts. On top it can add latency, enforce a requests-per-minute limit the
way providers do (smoothly, over one-second windows, with OpenAI's rate-limit
headers), inject random faults, and require an API key. It counts what it saw:
``GET /_stats`` or :attr:`FakeServer.stats`.

Run it alone with ``python -m llmbatch.testing.server --port 8900 --latency-ms 50``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmbatch.providers import script

__all__ = ["FakeServer", "ServerStats"]

FAULT_KINDS = (429, 500, 502, 503, "hang", "drop", "garbage", "nochoices")

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass
class ServerStats:
    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    rate_limited: int = 0
    authorizations: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "faults": dict(self.faults),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "rate_limited": self.rate_limited,
        }


class _Bucket:
    """Requests per minute enforced smoothly, as providers do: the bucket holds one
    second's worth (at least one) and refills continuously."""

    def __init__(self, rpm: float, loop: asyncio.AbstractEventLoop) -> None:
        self.rate = rpm / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.loop = loop
        self.last = loop.time()

    def take(self) -> float:
        """Take one; 0 when allowed, else the seconds until one is free."""
        now = self.loop.time()
        self.level = min(self.capacity, self.level + (now - self.last) * self.rate)
        self.last = now
        if self.level >= 1.0:
            self.level -= 1.0
            return 0.0
        return (1.0 - self.level) / self.rate

    @property
    def remaining(self) -> int:
        return int(self.level)


class FakeServer:
    """An OpenAI-compatible server on loopback; start it in a thread or serve it in a loop."""

    def __init__(
        self,
        *,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        rpm: float | None = None,
        fault_rate: float = 0.0,
        faults: tuple[int | str, ...] = FAULT_KINDS,
        retry_after: bool = True,
        limit_headers: bool = True,
        api_key: str | None = None,
        hang_seconds: float = 30.0,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.latency = latency_ms / 1000
        self.jitter = jitter_ms / 1000
        self.rpm = rpm
        self.fault_rate = fault_rate
        self.faults = faults
        self.retry_after = retry_after
        self.limit_headers = limit_headers  # x-ratelimit-*: off for servers that announce nothing
        self.api_key = api_key
        self.hang_seconds = hang_seconds
        self.rng = random.Random(seed)
        self.host = host
        self.port = port
        self.stats = ServerStats()
        self.attempts: dict[bytes, int] = {}
        self._bucket: _Bucket | None = None
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._seq = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # --- running -----------------------------------------------------------------

    async def serve(self) -> None:
        """Start listening in the running loop (returns once bound)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        if self.rpm:
            self._bucket = _Bucket(self.rpm, loop)
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    def start(self) -> FakeServer:
        """Serve from a background thread with its own event loop."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.serve())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.close())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- answering ---------------------------------------------------------------

    def _count(self, status: int) -> None:
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1

    def handle(self, conn: _Connection, method: str, path: str, headers: dict[str, str], raw: bytes) -> None:
        stats = self.stats
        stats.requests += 1
        auth = headers.get("authorization", "")
        stats.authorizations.add(auth)
        if method == "GET" and path.startswith("/_stats"):
            conn.respond(200, orjson.dumps(stats.as_dict()))
            return
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            self._count(401)
            conn.respond(
                401, _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
            )
            return
        route = path.split("?", 1)[0].removeprefix("/v1")
        if method != "POST" or route not in ("/chat/completions", "/embeddings"):
            self._count(404)
            conn.respond(404, _error(f"Unknown route {method} {path}", "invalid_request_error", None))
            return
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except (orjson.JSONDecodeError, ValueError) as exc:
            self._count(400)
            conn.respond(400, _error(f"Invalid JSON body: {exc}", "invalid_request_error", None))
            return

        if self._bucket is not None:
            wait = self._bucket.take()
            if wait > 0:
                stats.rate_limited += 1
                self._count(429)
                hdrs = self._limit_headers()
                if self.retry_after:
                    hdrs.append(("retry-after-ms", str(int(wait * 1000) + 1)))
                    hdrs.append(("retry-after", str(max(1, round(wait)))))
                conn.respond(
                    429, _error("Rate limit reached for requests", "requests", "rate_limit_exceeded"), hdrs
                )
                return

        key = hashlib.blake2b(raw, digest_size=12).digest()
        attempt = self.attempts.get(key, 0)
        self.attempts[key] = attempt + 1
        plan = script.parse_script(body)
        outcome = script.step(plan, attempt, body)
        fault = outcome.fault
        if fault is None and self.fault_rate and self.rng.random() < self.fault_rate:
            fault = self.rng.choice(self.faults)
            self.attempts[key] = attempt  # a random fault is not the script's attempt

        delay = self.latency
        if plan.latency_ms is not None:
            delay = plan.latency_ms / 1000
        if self.jitter:
            delay += self.rng.random() * self.jitter

        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        if fault is not None:
            self._fault(conn, fault, delay)
            return
        self._seq += 1
        rid = f"req_{self._seq:08d}"
        if route == "/embeddings":
            payload = script.embedding_body(body)
        else:
            payload = script.chat_body(body, outcome.text, outcome.finish, f"chatcmpl-{self._seq}")
        hdrs = [("x-request-id", rid), *self._limit_headers()]
        self._later(conn, delay, 200, orjson.dumps(payload), hdrs)

    def _limit_headers(self) -> list[tuple[str, str]]:
        if self._bucket is None or self.rpm is None or not self.limit_headers:
            return []
        reset = 1.0 / self._bucket.rate
        return [
            ("x-ratelimit-limit-requests", str(int(self.rpm))),
            ("x-ratelimit-remaining-requests", str(self._bucket.remaining)),
            ("x-ratelimit-reset-requests", f"{reset:.3f}s"),
        ]

    def _later(
        self,
        conn: _Connection,
        delay: float,
        status: int,
        body: bytes,
        hdrs: list[tuple[str, str]] | None = None,
    ) -> None:
        def send() -> None:
            self.stats.in_flight -= 1
            self._count(status)
            conn.respond(status, body, hdrs)

        if delay > 0 and self._loop is not None:
            self._loop.call_later(delay, send)
        else:
            send()

    def _fault(self, conn: _Connection, fault: int | str, delay: float) -> None:
        name = str(fault)
        self.stats.faults[name] = self.stats.faults.get(name, 0) + 1
        if isinstance(fault, int):
            code = {429: "rate_limit_exceeded", 401: "invalid_api_key"}.get(fault)
            hdrs: list[tuple[str, str]] = []
            if fault == 429 and self.retry_after:
                hdrs.append(("retry-after-ms", "20"))
            self._later(conn, delay, fault, _error(f"Injected fault {fault}", "server_error", code), hdrs)
        elif fault == "quota":
            self._later(
                conn,
                delay,
                429,
                _error("You exceeded your current quota.", "insufficient_quota", "insufficient_quota"),
            )
        elif fault == "garbage":
            self._later(conn, delay, 200, b"<html><body>502 upstream hiccup</body></html>")
        elif fault == "nochoices":
            self._later(
                conn, delay, 200, orjson.dumps({"id": "x", "object": "chat.completion", "choices": []})
            )
        elif fault == "hang":
            assert self._loop is not None

            def give_up() -> None:
                self.stats.in_flight -= 1
                conn.abort()

            self._loop.call_later(self.hang_seconds, give_up)
        else:  # "drop": headers and half a body, then the connection goes away

            def drop() -> None:
                self.stats.in_flight -= 1
                conn.send_torn()

            if self._loop is not None:
                self._loop.call_later(delay, drop)


def _error(message: str, kind: str, code: str | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests are answered in order."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            method, path, _ = ([*head[0].split(" ", 2), "", ""])[:3]
            headers: dict[str, str] = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buf) < end + 4 + length:
                return
            raw = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self.server.handle(self, method, path, headers, raw)

    def respond(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            "content-type: application/json",
            f"content-length: {len(body)}",
        ]
        if headers:
            lines.extend(f"{k}: {v}" for k, v in headers)
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def send_torn(self) -> None:
        if self.transport is None:
            return
        body = b'{"id": "chatcmpl-torn", "object": "chat.completion", "choices": [{"ind'
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body) * 3}\r\n\r\n"
        self.transport.write(head.encode() + body)
        self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--rpm", type=float, default=None)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--no-retry-after", action="store_true")
    parser.add_argument("--no-limit-headers", action="store_true", help="send no x-ratelimit-* headers")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    server = FakeServer(
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        rpm=args.rpm,
        fault_rate=args.fault_rate,
        retry_after=not args.no_retry_after,
        limit_headers=not args.no_limit_headers,
        api_key=args.api_key,
        host=args.host,
        port=args.port,
    )

    async def run() -> None:
        await server.serve()
        print(f"listening on {server.base_url}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
