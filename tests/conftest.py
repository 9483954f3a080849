"""Fixtures shared by every test file: loopback fake servers, the CLI run in-process,
JSONL helpers, and a hermetic environment (no real keys, proxies or config files)."""

from __future__ import annotations

import asyncio
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp import web
from typer.testing import CliRunner, Result

from llmbatch.app.cli import app
from llmbatch.core import retry
from llmbatch.testing.anthropic import AnthropicServer
from llmbatch.testing.server import FakeServer

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
# A distinctive Anthropic key the `anthropic` fixture's server takes (leaks are easy to grep for).
ANTHROPIC_KEY = "sk-ant-test-LEAKCHECK-91c2d7e4"
# The interpreter running the tests: `python -m llmbatch` in subprocess tests uses it.
PYTHON = sys.executable

# Variables that would make a test talk to a real provider or through a proxy.
_FOREIGN_ENV = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test ever reads a developer's real API key or goes through their proxy."""
    for name in _FOREIGN_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_backoff() -> Iterator[None]:
    """Retries happen at once (server-requested delays are still honoured)."""
    with retry.no_backoff():
        yield


class RecordingServer(FakeServer):
    """A FakeServer that also keeps what it was sent: `received` holds
    (method, path, headers, parsed JSON body or None) per request."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.received: list[tuple[str, str, dict[str, str], Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.received.append((request.method, request.path_qs, headers, body))
        return await super().handle(request)

    @property
    def bodies(self) -> list[Any]:
        """The JSON bodies of the API requests received, in arrival order."""
        return [body for method, path, _, body in self.received if not path.startswith("/_stats")]


@pytest.fixture
def serve() -> Iterator[Callable[..., Any]]:
    """`serve(ServerClass, *args, **kwargs)`: a started loopback server of that FakeServer
    subclass (a test's own faults), stopped at teardown."""
    servers: list[Any] = []  # FakeServer or AnthropicServer: each has start() and stop()

    def start(cls: type[Any], *args: Any, **kwargs: Any) -> Any:
        server = cls(*args, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def fake_server(serve: Callable[..., Any]) -> Callable[..., RecordingServer]:
    """`fake_server(**FakeServer kwargs)`: a started loopback server, stopped at teardown."""
    return lambda **kwargs: serve(RecordingServer, **kwargs)


@pytest.fixture
def anthropic(serve: Callable[..., Any]) -> Callable[..., AnthropicServer]:
    """`anthropic(**AnthropicServer kwargs)`: a started fake Anthropic API that takes
    ANTHROPIC_KEY, stopped at teardown."""
    return lambda **kwargs: serve(AnthropicServer, api_key=ANTHROPIC_KEY, **kwargs)


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A distinctive OPENAI_API_KEY, set for the test (so leaks are easy to grep for)."""
    key = "sk-test-LEAKCHECK-7f3a9c1e5b2d4f60"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    return key


@pytest.fixture
def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """`run_cli(*args, env=None, input=None)`: `llmbatch ARGS` in-process (`input`: its
    standard input), from an empty working directory (no stray llmbatch.toml). The
    result has exit_code, stdout and stderr apart (typer's CliRunner always separates
    them; `output` is both interleaved).
    An exception escaping the CLI is raised in the test, never mistaken for exit 1."""
    workdir = tmp_path / "cwd"
    workdir.mkdir(exist_ok=True)
    monkeypatch.chdir(workdir)
    runner = CliRunner()

    def invoke(*args: object, env: dict[str, str | None] | None = None, input: bytes | None = None) -> Result:
        argv = [os.fspath(a) if isinstance(a, Path) else str(a) for a in args]
        return runner.invoke(app, argv, env=env, input=input, catch_exceptions=False)

    return invoke


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    """Write one line per row: objects as JSON, `str`/`bytes` as the raw line itself
    (for bad lines). Returns `path`."""
    with path.open("wb") as f:
        for row in rows:
            if isinstance(row, bytes):
                f.write(row + b"\n")
            elif isinstance(row, str):
                f.write(row.encode() + b"\n")
            else:
                f.write(orjson.dumps(row) + b"\n")
    return path


def read_jsonl(path: Path) -> list[Any]:
    """Every line of a JSONL file, parsed (a torn or bad line fails the test)."""
    with path.open("rb") as f:
        return [orjson.loads(line) for line in f]


def by_id(out: Path) -> dict[str, dict[str, Any]]:
    """An output's lines by custom_id; an id written twice fails the test."""
    records = read_jsonl(out)
    counts = Counter(r["custom_id"] for r in records)
    assert all(k == 1 for k in counts.values()), (
        f"ids written twice: {[c for c, k in counts.items() if k > 1][:5]}"
    )
    return {r["custom_id"]: r for r in records}


def reap(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """Kill whichever of `procs` still runs and collect them all, pipes read and closed:
    a test that fails midway must not leave its processes running into the next one."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


# --- virtual time -------------------------------------------------------------------

T = TypeVar("T")


class _FastForward(selectors.DefaultSelector):
    """Polls without blocking; the time it would have blocked passes on the clock.

    Each turn of the loop also costs a nanosecond, as a real one does: a timer set for
    "now" by rounding (aiolimiter's wake-up maths) must not spin a frozen clock."""

    loop: VirtualTimeLoop

    def select(self, timeout: float | None = None) -> Any:
        events = super().select(0)
        if events:
            return events
        if timeout is None:
            raise RuntimeError("deadlock: every task waits and no timer is set")
        self.loop.now += max(timeout, 1e-9)
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _FastForward()
        super().__init__(selector)
        selector.loop = self
        self.now = 1000.0  # not 0: a clock starting at 0 hides "0 means unset" bugs

    def time(self) -> float:
        return self.now


def virtual(main: Callable[[], Awaitable[T]]) -> T:
    """Run `main()` on a loop with a virtual clock; returns its result."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


# --- Redis (the shared budget's tests) ----------------------------------------------

REDIS_SERVER = shutil.which("redis-server")
INSTALL_REDIS = "redis-server is not installed: `apt-get install redis-server` runs the shared-limit tests"


def free_port() -> int:
    """A loopback TCP port nothing listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own on a free loopback port, persistence off. It can
    be stopped and started again on the same port (Redis lost mid-run, then back,
    having forgotten everything)."""

    def __init__(self, folder: Path) -> None:
        assert REDIS_SERVER is not None
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None and self.proc is None
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [REDIS_SERVER, *args, "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self) -> Any:
        """A plain (blocking) redis-py client, for looking at what is stored."""
        import redis

        return redis.Redis(port=self.port, socket_timeout=5)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A started redis-server (see RedisServer), stopped at teardown; the test is
    skipped, saying how to install it, where redis-server is missing."""
    if REDIS_SERVER is None:
        pytest.skip(INSTALL_REDIS)
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """`spawn(*args, key=KEY)`: `python -m llmbatch run ARGS` as a process of its own in
    tmp_path, with `key` as OPENAI_API_KEY and no proxy settings; reaped at teardown."""
    base = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("OPENAI_")}
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: object, key: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "llmbatch", "run", *map(str, args)]
        env = {**base, "OPENAI_API_KEY": key, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield start
    reap(procs)
