"""One quota, many processes: the budget shared through a real Redis (never a mock), its
pauses and pace cuts, the fallback when Redis is lost, and exit 2 when it is away."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PYTHON, RedisServer, free_port, read_jsonl, reap, write_jsonl

from llmbatch.scale.budget import SharedBudget, default_key
from llmbatch.schedule.limits import Limits

KEY = "test-budget"


def _bodies(n: int, tag: str = "q") -> list[dict[str, object]]:
    return [
        {
            "custom_id": f"{tag}-{i}",
            "body": {"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}]},
        }
        for i in range(n)
    ]


async def _until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait (polling) until `check()` holds; fail the test if it never does."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the shared state never arrived")
        await asyncio.sleep(0.05)


# --- in one process: two or three budgets on one key, as separate processes have ----------


async def test_a_429_pause_in_one_process_holds_the_others(redis_server: RedisServer) -> None:
    """A 429 that pauses one process pauses the other one on the key too, and the
    other's panel says whose pause it is."""
    a, b = [await SharedBudget.connect(redis_server.url, KEY) for _ in range(2)]
    try:
        first, second = Limits(rpm=600, shared=a), Limits(rpm=600, shared=b)
        await first.acquire()
        first.pushed_back(5.0)
        await _until(lambda: b.pause_left()[0] > 1.0)
        waiting = asyncio.create_task(second.acquire())
        await asyncio.sleep(0.2)
        assert not waiting.done()
        assert "seen by another process" in (second.status() or "")
        waiting.cancel()
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_lowered_pace_in_one_process_lowers_the_others(redis_server: RedisServer) -> None:
    """When 429s make one process cut its pace, the other process on the key cuts its
    own pace too: the key's whole rate falls, not one process's."""
    a, b = [await SharedBudget.connect(redis_server.url, KEY) for _ in range(2)]
    try:
        await _until(lambda: a.peers == b.peers == 2)
        first, second = Limits(rpm=6000, shared=a), Limits(rpm=6000, shared=b)
        for _ in range(30):
            for limits in (first, second):
                await limits.acquire()
                limits.succeeded()
        for _ in range(5):  # 429s become a real share of the answers: a cut
            first.pushed_back(0.05)
        assert first.pace_rpm is not None
        await _until(lambda: b._cut)
        await second.acquire()
        assert second.pace_rpm is not None
        assert second.pace_rpm == pytest.approx(first.pace_rpm, rel=0.5)  # each cuts from its own rates
        assert "lowered after 429s" in (second.status() or "")
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_token_debt_settles_in_redis_for_every_process_and_so_does_its_refund(
    redis_server: RedisServer,
) -> None:
    """Tokens settle in Redis: an answer far bigger than its estimate leaves a debt in
    the key's budget (every process waits it off), and a refund gives it back."""
    a, b = [await SharedBudget.connect(redis_server.url, KEY) for _ in range(2)]

    def level() -> float:
        with redis_server.client() as r:
            return float(r.hget(a.keys["tokens"], "level"))

    try:
        mine, theirs = a.bucket("tokens", 6000), b.bucket("tokens", 6000)  # 100 tokens a second
        await mine.acquire(10)
        mine.adjust(+3000)  # the answer used 3,000 tokens more than charged
        await _until(lambda: not mine.pending)
        assert level() > 2000  # about 30 s of budget owed, by the key
        mine.adjust(-3000)
        await _until(lambda: not mine.pending)
        assert level() < 100
        started = time.monotonic()
        await theirs.acquire(50)
        assert time.monotonic() - started < 5  # not the 30 s the debt would have cost
    finally:
        await a.aclose()
        await b.aclose()


async def test_the_scripts_are_loaded_again_when_redis_forgot_them(redis_server: RedisServer) -> None:
    """After SCRIPT FLUSH (as after a restart) the budget still works, still shared."""
    budget = await SharedBudget.connect(redis_server.url, KEY)
    try:
        bucket = budget.bucket("requests", 600)
        await bucket.acquire(1)
        with redis_server.client() as r:
            r.script_flush()
        await bucket.acquire(1)
        assert budget.online
        with redis_server.client() as r:
            assert float(r.hget(budget.keys["requests"], "level")) > 1.5
    finally:
        await budget.aclose()


async def test_redis_lost_leaves_each_process_its_share_then_it_is_shared_again(
    redis_server: RedisServer,
) -> None:
    """Redis lost with three processes on the key: one warning, and each process goes
    on at a third of the budget; Redis back: one note, and the budget is Redis' again."""
    said: list[str] = []
    budgets = [await SharedBudget.connect(redis_server.url, KEY, log=said.append) for _ in range(3)]
    first = budgets[0]
    try:
        await _until(lambda: all(b.peers == 3 for b in budgets))
        bucket = first.bucket("requests", 3000)
        await bucket.acquire(1)
        redis_server.stop()
        await bucket.acquire(1)
        await bucket.acquire(1)
        assert bucket.rate == pytest.approx(50 / 3)
        await _until(lambda: not any(b.online for b in budgets))
        redis_server.start()
        await _until(lambda: all(b.online for b in budgets), seconds=10)
        await bucket.acquire(1)
        assert bucket.rate == pytest.approx(50)
        with redis_server.client() as r:
            assert r.exists(first.keys["requests"])  # the budget lives in Redis again
    finally:
        for budget in budgets:
            await budget.aclose()
    lost = [m for m in said if "lost" in m]
    assert len(lost) == 3  # one per process
    assert "1/3 of the budget (3 processes seen)" in lost[0]
    assert sum("is back" in m for m in said) == 3


def test_runs_on_one_api_key_share_a_budget_and_other_keys_do_not() -> None:
    """The default budget name: the same for the same server, model and key; another
    for another key; the key itself is not in it."""
    key = "sk-secret-1234567890"
    same = default_key("https://api.openai.com/v1", "gpt-4o-mini", key)
    assert same == default_key("https://api.openai.com/v1/", "gpt-4o-mini", key)
    assert same != default_key("https://api.openai.com/v1", "gpt-4o-mini", key + "x")
    assert same != default_key("https://api.openai.com/v1", "gpt-4o", key)
    assert same.startswith("gpt-4o-mini:") and "secret" not in same


# --- the command line --------------------------------------------------------------------


def test_unreachable_redis_at_the_start_is_exit_2_and_nothing_is_sent(
    run_cli, tmp_path, fake_server, api_key
):
    """No Redis where --redis points: exit 2 with the reason, no request sent, no output
    made, and the URL's password is not repeated."""
    server = fake_server()
    source = write_jsonl(tmp_path / "in.jsonl", _bodies(3))
    out = tmp_path / "out.jsonl"
    url = f"redis://:hunter2pass@127.0.0.1:{free_port()}/0"
    result = run_cli("run", source, "-o", out, "--base-url", server.base_url, "--redis", url, "--no-live")
    assert result.exit_code == 2
    assert "cannot reach Redis at redis://127.0.0.1:" in result.stderr
    assert "hunter2pass" not in result.output
    assert server.stats.by_status == {}
    assert not out.exists()


def test_the_redis_url_can_come_from_the_environment(run_cli, tmp_path, fake_server, api_key):
    """LLMBATCH_REDIS_URL is --redis (here an unreachable one: exit 2)."""
    server = fake_server()
    source = write_jsonl(tmp_path / "in.jsonl", _bodies(3))
    env = {"LLMBATCH_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = run_cli("run", source, "-o", tmp_path / "o.jsonl", "--base-url", server.base_url, env=env)
    assert result.exit_code == 2
    assert "cannot reach Redis" in result.stderr


class _Monitor:
    """Everything Redis is told (MONITOR), captured in a thread: what a leak check reads."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"MONITOR\r\n")
        self.seen = bytearray()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while chunk := self._recv():
            self.seen += chunk

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except OSError:
            return b""

    def close(self) -> bytes:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        self.sock.close()
        return bytes(self.seen)


def _stored(redis_server: RedisServer) -> bytes:
    """Every key in Redis and its value, as bytes."""
    out = bytearray()
    with redis_server.client() as r:
        for key in r.scan_iter():
            out += key
            kind = r.type(key)
            if kind == b"string":
                out += r.get(key) or b""
            elif kind == b"hash":
                for k, v in r.hgetall(key).items():
                    out += k + v
            elif kind == b"zset":
                for member in r.zrange(key, 0, -1):
                    out += member
    return bytes(out)


def test_the_api_key_never_reaches_redis(run_cli, tmp_path, fake_server, api_key, redis_server):
    """With a budget shared through Redis (429s, pauses and learned limits included),
    neither what is stored nor any command Redis receives holds the API key."""
    server = fake_server(rpm=1200, tpm=200_000)
    source = write_jsonl(tmp_path / "in.jsonl", _bodies(60))
    monitor = _Monitor(redis_server.port)
    result = run_cli(
        "run", source, "-o", tmp_path / "out.jsonl", "--base-url", server.base_url,
        "--redis", redis_server.url, "--rpm", "2400", "--no-live",
    )  # fmt: skip
    stored = _stored(redis_server)
    seen = monitor.close()
    assert result.exit_code == 0, result.output
    assert b"EVALSHA" in seen.upper() and b"llmbatch:{m:" in stored
    for secret in (api_key, api_key[3:], "LEAKCHECK"):
        assert secret.encode() not in seen
        assert secret.encode() not in stored
        assert secret not in result.output


# --- several processes ------------------------------------------------------------------


def _start_shards(
    n: int, source: Path, out: Path, *, base_url: str, redis_url: str | None, rpm: int, key: str
) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "OPENAI_API_KEY": key}
    procs = []
    for k in range(n):
        args = [PYTHON, "-m", "llmbatch", "run", str(source), "-o", str(out), "--base-url", base_url]
        args += ["--shard", f"{k}/{n}", "--rpm", str(rpm), "--no-live", "--progress-every", "1"]
        if redis_url is not None:
            args += ["--redis", redis_url]
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


@pytest.fixture
def start_shards() -> Iterator[Callable[..., list[subprocess.Popen[bytes]]]]:
    """`_start_shards`, with every shard process stopped when the test ends: a test that
    fails before its shards finish must not leave them running into the next test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: Any, **kwargs: Any) -> list[subprocess.Popen[bytes]]:
        procs = _start_shards(*args, **kwargs)
        started.extend(procs)
        return procs

    yield start
    reap(started)


def _finish(procs: list[subprocess.Popen[bytes]]) -> Iterator[tuple[int, str]]:
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        yield proc.returncode, err.decode()


def _ids(paths: list[Path]) -> Counter[str]:
    return Counter(rec["custom_id"] for path in paths for rec in read_jsonl(path))


def test_three_processes_share_one_budget_and_stay_under_it(
    tmp_path, fake_server, api_key, redis_server, start_shards
):
    """Three shards on one key with --rpm R through Redis, against a server enforcing R:
    together they keep to R (a 429 now and then at most), and cover the input once."""
    server = fake_server(rpm=3000)
    items = 300
    source = write_jsonl(tmp_path / "in.jsonl", _bodies(items))
    out = tmp_path / "out-{shard}.jsonl"
    procs = start_shards(
        3, source, out, base_url=server.base_url, redis_url=redis_server.url, rpm=3000, key=api_key
    )
    results = list(_finish(procs))
    assert [code for code, _ in results] == [0, 0, 0], results
    counts = _ids([tmp_path / f"out-{k}.jsonl" for k in range(3)])
    assert len(counts) == items and set(counts.values()) == {1}
    assert server.stats.rate_limited <= items * 0.03, server.stats.as_dict()


def _lines(path: Path) -> int:
    """Lines in a shard's output so far. A starting run makes its output to check that
    it can, and removes it again until it is ready to write: it may come and go."""
    try:
        return len(path.read_bytes().splitlines())
    except FileNotFoundError:
        return 0


def test_redis_killed_and_restarted_mid_run_every_shard_finishes_once(
    tmp_path, fake_server, api_key, redis_server, start_shards
):
    """Redis dies mid-run and comes back empty: every shard warns, goes on at its share,
    rejoins, and finishes; each id is answered and written exactly once."""
    server = fake_server(rpm=3000)
    items = 300
    source = write_jsonl(tmp_path / "in.jsonl", _bodies(items))
    out = tmp_path / "out-{shard}.jsonl"
    outputs = [tmp_path / f"out-{k}.jsonl" for k in range(3)]
    procs = start_shards(
        3, source, out, base_url=server.base_url, redis_url=redis_server.url, rpm=1500, key=api_key
    )
    deadline = time.monotonic() + 60
    while not all(_lines(p) >= 5 for p in outputs):
        assert time.monotonic() < deadline, "the shards did not start"
        time.sleep(0.05)
    redis_server.stop()
    time.sleep(2.0)
    redis_server.start()
    results = list(_finish(procs))
    assert [code for code, _ in results] == [0, 0, 0], results
    for _, err in results:
        assert err.count("lost (") == 1, err
        assert "is back" in err
    counts = _ids(outputs)
    assert len(counts) == items and set(counts.values()) == {1}
    assert server.stats.by_status.get(200) == items  # nothing was sent twice
