"""`python -m llmbatch run` as a real process, interrupted the ways the world interrupts
it: SIGKILL at random moments, SIGTERM or Ctrl-C (finish in flight, flush, summary,
exit 3), a second Ctrl-C (abort now). After each, a rerun resumes, and in the end every
input line has exactly one whole output line."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import reap

from llmbatch.testing.server import FakeServer

KEY = "sk-signals-test-0a1b2c3d4e5f"


def write_input(path: Path, n: int) -> list[str]:
    ids = [f"item-{i:05d}" for i in range(n)]
    rows = (
        {"custom_id": cid, "body": {"model": "m", "messages": [{"role": "user", "content": f"say {cid}"}]}}
        for cid in ids
    )
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return ids


def output_lines(path: Path) -> tuple[list[dict[str, Any]], bytes]:
    """The whole lines of an output, parsed, and whatever torn tail follows them."""
    data = path.read_bytes() if path.exists() else b""
    whole, _, tail = data.rpartition(b"\n")
    return [orjson.loads(line) for line in whole.splitlines()], tail


def assert_every_id_once(ids: list[str], out: Path) -> list[dict[str, Any]]:
    records, tail = output_lines(out)
    assert tail == b"", "the output ends in a torn line"
    got = Counter(r["custom_id"] for r in records)
    dupes = [cid for cid, k in got.items() if k > 1]
    assert not dupes, f"{len(dupes)} ids written twice, e.g. {dupes[:5]}"
    missing = set(ids) - set(got)
    assert not missing, f"{len(missing)} ids lost, e.g. {sorted(missing)[:5]}"
    assert set(got) == set(ids)
    return records


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def wait_until_sending(srv: FakeServer, sent_before: int, proc: subprocess.Popen[bytes]) -> None:
    """Until the process's first request reaches the server (or the process ends)."""
    deadline = time.monotonic() + 60
    while srv.stats.requests == sent_before and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.send_signal(signal.SIGINT)
            raise AssertionError(f"no request in 60 s: {proc.communicate(timeout=10)}")
        time.sleep(0.005)


@pytest.fixture
def server(fake_server: Callable[..., FakeServer]) -> Callable[..., FakeServer]:
    """`server(**kwargs)`: conftest's loopback FakeServer factory, stopped at teardown."""
    return fake_server


@pytest.fixture
def llmbatch(tmp_path: Path) -> Callable[..., subprocess.Popen[bytes]]:
    """`llmbatch(*args)`: start `python -m llmbatch run ARGS` with a test key."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("OPENAI_")}
    env.update(OPENAI_API_KEY=KEY, PYTHONUNBUFFERED="1")
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: object) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "llmbatch", "run", *map(str, args)]
        pipe = subprocess.PIPE
        proc = subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe
        )
        procs.append(proc)
        return proc

    yield start
    reap(procs)


def test_sigkill_at_random_moments_loses_and_doubles_nothing(llmbatch, server, tmp_path):
    """SIGKILL four times at random moments mid-run (one kill also tears the last line,
    as a kill mid-write would) while 10% of attempts fail (5xx, dropped connections,
    non-JSON answers), rerunning in between, then a run to the end: every id exactly
    once, no torn line, nothing lost; each rerun redoes at most what was in flight,
    waiting to retry, or not yet flushed."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    n, concurrency = 3000, 32
    ids = write_input(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    srv = server(latency_ms=15, jitter_ms=30, fault_rate=0.1, faults=(500, 503, "drop", "garbage"), seed=seed)
    args = ("in.jsonl", "-o", "out.jsonl", "--base-url", srv.base_url, "-c", concurrency, "--no-live", "-q")
    figures = [f"seed {seed}"]  # in every failure message: the moments can be replayed

    for kill in range(4):
        before, _ = output_lines(out)
        sent_before = srv.stats.requests
        proc = llmbatch(*args)
        wait_until_sending(srv, sent_before, proc)
        time.sleep(rng.uniform(0.1, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        records, tail = output_lines(out)
        assert proc.returncode == -signal.SIGKILL, (figures, proc.communicate()[1].decode())
        # Only whole lines, plus at most one torn tail; nothing written before is gone.
        assert records[: len(before)] == before
        assert len({r["custom_id"] for r in records}) == len(records), "a rerun wrote an id again"
        assert set(r["custom_id"] for r in records) <= set(ids)
        if kill == 1 and records:  # as if killed in the middle of writing the last line
            data = out.read_bytes()
            whole = data[: data.rfind(b"\n") + 1]
            start = whole.rstrip(b"\n").rfind(b"\n") + 1
            out.write_bytes(whole[: start + 40])
            tail = whole[start : start + 40]
            records = records[:-1]
        figures.append(
            f"kill {kill + 1}: {len(records) - len(before)} lines kept, {srv.stats.requests - sent_before} "
            f"requests sent, torn tail {len(tail)} bytes"
        )

    sent_before = srv.stats.requests
    before, _ = output_lines(out)
    proc = llmbatch(*args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    records = assert_every_id_once(ids, out)
    assert all(r["llmbatch"]["valid"] for r in records)
    # The last run sent only what was left (and the retries its own faults cost).
    assert srv.stats.requests - sent_before >= n - len(before)
    faults = sum(srv.stats.faults.values())
    redone = srv.stats.requests - n - faults
    figures.append(f"final run: {n - len(before)} lines; {srv.stats.requests} requests for {n} items")
    # What a kill can cost: the requests in flight, and answers not yet flushed (50 ms).
    assert redone <= 4 * (concurrency + 200), figures
    print("\n" + "; ".join(figures) + f"; {faults} faults; redone {redone}, lost 0, duplicates 0")


def summary_figure(stderr: str, label: str) -> int:
    match = re.search(rf"^{label}: ([\d,]+)", stderr, re.MULTILINE)
    assert match, stderr
    return int(match.group(1).replace(",", ""))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_stops_dispatch_finishes_in_flight_and_exits_3(llmbatch, server, tmp_path, sig):
    """SIGTERM or Ctrl-C mid-run: nothing new is sent, every request in flight is
    answered and written, the summary goes to stderr, exit 3; a rerun finishes the rest
    and every id is written exactly once."""
    n, concurrency = 300, 16
    ids = write_input(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    srv = server(latency_ms=300)
    args = ("in.jsonl", "-o", "out.jsonl", "--base-url", srv.base_url, "-c", concurrency, "--no-live")
    proc = llmbatch(*args)
    wait_for(lambda: srv.stats.requests >= 3 * concurrency, 60, "requests in flight")
    sent_at_signal = srv.stats.requests
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=15)
    err = stderr.decode()

    assert proc.returncode == 3, err
    assert stdout == b""
    assert f"{sig.name} received" in err
    records, tail = output_lines(out)
    assert tail == b""
    sent = srv.stats.requests
    assert sent - sent_at_signal <= concurrency  # only what was already on its way
    assert len(records) == sent  # every request sent was answered and written
    assert summary_figure(err, "written") == len(records)
    assert re.search(r"^stopped: .*received", err, re.MULTILINE)
    assert 0 < len(records) < n

    srv.latency = 0.005
    rerun = llmbatch(*args)
    _, stderr = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, stderr.decode()
    assert_every_id_once(ids, out)
    assert srv.stats.requests == n  # nothing was asked twice


def test_second_ctrl_c_aborts_at_once_leaving_whole_lines(llmbatch, server, tmp_path):
    """Ctrl-C waits for requests in flight; a second Ctrl-C does not: the run exits 3 at
    once, with only whole lines written, and a rerun finishes with every id once."""
    n, concurrency = 1000, 8
    ids = write_input(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    srv = server(latency_ms=5)
    args = ("in.jsonl", "-o", "out.jsonl", "--base-url", srv.base_url, "-c", concurrency, "--no-live")
    proc = llmbatch(*args)
    wait_for(lambda: srv.stats.requests >= 100, 60, "a hundred requests")
    srv.latency = 60.0  # from now on every answer is a minute away
    switched = srv.stats.requests
    wait_for(lambda: srv.stats.requests >= switched + concurrency, 10, "only slow requests in flight")

    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None, "the first Ctrl-C must wait for the requests in flight"
    sent = srv.stats.requests
    aborted_at = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=15)
    took = time.monotonic() - aborted_at
    err = stderr.decode()

    assert proc.returncode == 3, err
    assert took < 5, f"the second Ctrl-C took {took:.1f} s to stop the run"
    assert srv.stats.requests == sent  # nothing new was sent after the first Ctrl-C
    records, tail = output_lines(out)
    assert tail == b""
    assert len({r["custom_id"] for r in records}) == len(records) == summary_figure(err, "written")
    assert len(records) <= sent - concurrency  # the aborted ones were not written

    srv.latency = 0.002
    rerun = llmbatch(*args)
    _, stderr = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, stderr.decode()
    assert_every_id_once(ids, out)
