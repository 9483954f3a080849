"""Processes for the benchmarks: the fake server on one core, each client on the other,
measured one at a time (wall time, CPU time and peak RSS from ``wait4``), every one of
them bounded in time and killed if it overstays."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "CLIENT_CORES",
    "SERVER_CORES",
    "Measured",
    "Redis",
    "Server",
    "client_env",
    "listen_overflows",
    "run_measured",
    "run_together",
    "write_input",
]


def _cores() -> tuple[set[int] | None, set[int] | None]:
    """(client cores, server cores): one core each when two are ours, else no pinning."""
    try:
        available = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return None, None
    if len(available) < 2:
        return None, None
    first, second = sorted(available)[:2]
    return {first}, {second}


CLIENT_CORES, SERVER_CORES = _cores()
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _pin(cores: set[int] | None) -> Callable[[], None] | None:
    if cores is None:
        return None
    return lambda: os.sched_setaffinity(0, cores)


def client_env(**extra: str) -> dict[str, str]:
    """The environment for a client: no proxy may stand between it and loopback."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass(frozen=True, slots=True)
class Measured:
    """One client process, start to exit."""

    returncode: int
    wall_s: float
    cpu_s: float  # user + system, the whole process: start-up included
    maxrss_mb: float
    stdout: str
    stderr: str
    timed_out: bool

    def json(self) -> dict[str, Any]:
        """The last stdout line that is a JSON object, or {}."""
        for line in reversed(self.stdout.splitlines()):
            with contextlib.suppress(orjson.JSONDecodeError):
                value = orjson.loads(line)
                if isinstance(value, dict):
                    return value
        return {}


def run_measured(
    argv: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    poll: Callable[[float], None] | None = None,
    cwd: Path | None = None,
) -> Measured:
    """Run `argv` pinned to the client core; kill it after `timeout` seconds. `poll` is
    called with the seconds since the start, every 20 ms while it runs; `cwd` is where it
    runs (by default here: `python -m` puts that folder first on the import path)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            preexec_fn=_pin(CLIENT_CORES),
        )
        deadline = started + timeout
        timed_out = False
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                now = time.perf_counter()
                if now > deadline:
                    timed_out = True
                    proc.kill()
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                if poll is not None:
                    poll(now - started)
                    time.sleep(0.02)
                else:
                    time.sleep(0.005)
        except BaseException:  # interrupted: the client must not outlive the benchmark
            proc.kill()
            proc.wait(10)
            raise
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            returncode=proc.returncode,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            maxrss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
            timed_out=timed_out,
        )


class Server:
    """`python -m llmbatch.testing.server` in its own process on the server core."""

    def __init__(
        self,
        *,
        latency_ms: float = 0.0,
        rpm: float | None = None,
        limit_headers: bool = True,
        extra: Sequence[str] = (),
    ) -> None:
        self.argv = [sys.executable, "-m", "llmbatch.testing.server", "--port", "0"]
        self.argv += ["--latency-ms", str(latency_ms)]
        if rpm is not None:
            self.argv += ["--rpm", str(rpm)]
        if not limit_headers:
            self.argv += ["--no-limit-headers"]
        self.argv += list(extra)  # any other server flag: --tpm, --start-spent, --batch-*...
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=client_env(),
            preexec_fn=_pin(SERVER_CORES),
        )
        assert self.proc.stdout is not None
        try:
            ready, _, _ = select.select([self.proc.stdout], [], [], 30.0)
            line = self.proc.stdout.readline().decode() if ready else ""
            if "listening on " not in line:
                raise RuntimeError(f"the fake server did not start: {line!r}")
            self.base_url = line.split("listening on ", 1)[1].strip()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    @property
    def url(self) -> str:
        return self.base_url + "/chat/completions"

    def stats(self) -> dict[str, Any]:
        """The server's counters (GET /_stats)."""
        root = self.base_url.removesuffix("/v1")
        with _LOOPBACK.open(root + "/_stats", timeout=10) as resp:
            stats: dict[str, Any] = orjson.loads(resp.read())
            return stats

    def cpu_s(self) -> float:
        """CPU seconds the server has used so far (from /proc)."""
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Redis:
    """A redis-server of the benchmark's own on a free loopback port, persistence off."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> Redis:
        import shutil
        import socket

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [binary, *args, "--dir", str(self.folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def run_together(argvs: Sequence[Sequence[str]], *, timeout: float, env: dict[str, str]) -> list[Measured]:
    """Several clients at once (processes sharing one quota), each measured as
    `run_measured` does, all on the client core."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(len(argvs)) as pool:
        futures = [pool.submit(run_measured, argv, timeout=timeout, env=env) for argv in argvs]
        return [f.result() for f in futures]


def listen_overflows() -> int:
    """Connections the kernel dropped because a listen queue was full (all of this
    machine's sockets): each one costs its client a SYN retransmit, a second or more."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0


def write_input(path: Path, n: int, *, max_tokens: int | None = 16, content: str = "") -> Path:
    """N Batch API request lines, streamed to disk (the benchmark process stays small).
    `max_tokens` None leaves the answer unbounded; `content` replaces the prompt."""
    with path.open("wb", buffering=1 << 20) as f:
        for i in range(n):
            text = content or f"Write one word about item number {i}."
            body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
            if max_tokens is not None:
                body["max_tokens"] = max_tokens
            line = {"custom_id": f"r-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            f.write(orjson.dumps(line) + b"\n")
    return path
