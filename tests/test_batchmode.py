"""`llmbatch run --batch-api` through the CLI against the fake server's Batch API over
loopback: the split, follow-up rounds, the batch price, kills at any moment, a lost
create, --no-wait, expiry, --then live, --cancel, and open batches binding the output."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import by_id, write_jsonl

from llmbatch.files import sidecars
from llmbatch.modes.batch.state import BatchState

pytestmark = pytest.mark.usefixtures("no_backoff")

POLL = ("--poll-every", "0.05")


def rows(n: int, *, bad_every: int = 0) -> list[dict[str, Any]]:
    """Data items; every `bad_every`-th answers badly once (a follow-up round)."""
    out = []
    for i in range(n):
        script = {"answer": {"n": i}}
        if bad_every and i % bad_every == 0:
            script = {"bad": 1, **script}
        text = "@fake " + orjson.dumps(script).decode()
        out.append({"id": f"r{i}", "text": text})
    return out


def flags(server: Any, *extra: object) -> list[object]:
    return ["--batch-api", "--base-url", server.base_url, "--prompt", "{text}", "--id-field", "id",
            "-m", "gpt-4o-mini", "--validate", "json", "--no-live", *POLL, *extra]  # fmt: skip


def test_items_are_split_into_batches_and_invalid_ones_follow_up(run_cli, fake_server, api_key, tmp_path):
    """25 items at --batch-requests 10: three batches; the items answered badly come
    back through follow-up batches; every id once, valid, answered via batch; the cost
    is the batch price."""
    server = fake_server()
    src = write_jsonl(tmp_path / "in.jsonl", rows(25, bad_every=5))
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "s.json"
    result = run_cli(
        "run", src, "-o", out, *flags(server, "--batch-requests", "10", "--summary-json", summary)
    )
    assert result.exit_code == 0, result.output
    records = by_id(out)
    assert len(records) == 25
    assert all(r["llmbatch"]["valid"] and r["llmbatch"]["via"] == "batch" for r in records.values())
    assert all(r["llmbatch"]["batch_id"] for r in records.values())
    # 3 batches, then a follow-up of each for its bad answers (one per batch, whatever
    # the timing: a rerun killed at any moment makes the same ones)
    assert server.stats.creates == server.stats.uploads == 3 + 3
    assert all(server.stats.answers[f"r{i}"] == (2 if i % 5 == 0 else 1) for i in range(25))
    assert records["r5"]["llmbatch"]["requests"] == 2  # answered badly once, then well
    s = orjson.loads(summary.read_bytes())
    assert s["price"]["input_per_mtok"] == 0.075  # gpt-4o-mini's batch price, half its list price
    assert "Batch API" in s["price"]["source"]
    timeline = BatchState(sidecars.batches(out), read_only=True).timeline()
    assert {r["llmbatch"]["batch_id"] for r in records.values()} <= {b.batch_id for b in timeline}
    assert len(timeline) == 6
    assert all(b.created and b.completed and b.created <= b.completed for b in timeline)


def test_a_batch_record_of_an_older_llmbatch_gains_the_completed_times(tmp_path):
    """A record made before batches kept when they were collected opens and migrates;
    its batches are on the timeline with no completed time (and read-only, untouched)."""
    path = tmp_path / "out.jsonl.batches.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE chunks (id INTEGER PRIMARY KEY, round INTEGER NOT NULL, endpoint TEXT NOT NULL,"
        " model TEXT NOT NULL, items INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,"
        " tokens INTEGER NOT NULL DEFAULT 0, worst REAL NOT NULL DEFAULT 0, state TEXT NOT NULL,"
        " live INTEGER NOT NULL DEFAULT 0, file_id TEXT, batch_id TEXT, status TEXT, counts TEXT,"
        " error TEXT, created REAL NOT NULL, submitted REAL, held INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO chunks (round, endpoint, model, items, state, batch_id, status, created, submitted)"
        " VALUES (0, '/v1/chat/completions', 'gpt-4o-mini', 7, 'collected', 'batch_old', 'completed', 1, 2);"
    )
    db.commit()
    db.close()
    (old,) = BatchState(path, read_only=True).timeline()
    assert (old.batch_id, old.items, old.created, old.completed) == ("batch_old", 7, 2.0, None)
    state = BatchState(path)
    (chunk,) = state.chunks()
    assert chunk.completed is None and chunk.batch_id == "batch_old"
    state.close()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("OPENAI_")}
    env.update(OPENAI_API_KEY="sk-test-batch", PYTHONUNBUFFERED="1")
    return env


def _start(cwd: Path, *args: object) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "llmbatch", "run", *map(str, args)]
    return subprocess.Popen(argv, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_at_random_moments_pays_for_nothing_twice(fake_server, tmp_path):
    """SIGKILL at 8 random moments (uploading, just after a create, polling, collecting),
    rerunning in between, then a run to the end: the server saw exactly as many uploads
    and creates as a clean run of the same input, every id is in the output once, and
    no item was answered more often than its re-asks required."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    items = rows(60, bad_every=7)
    src = write_jsonl(tmp_path / "in.jsonl", items)
    behaviour = {"batch_start_delay": 0.3, "batch_lines_per_second": 5}
    clean_server = fake_server(**behaviour)
    clean = tmp_path / "clean.jsonl"
    done = subprocess.run([sys.executable, "-m", "llmbatch", "run", str(src), "-o", str(clean),
                           *map(str, flags(clean_server, "--batch-requests", "5"))],
                          cwd=tmp_path, env=_env(), capture_output=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()

    server = fake_server(**behaviour)
    out = tmp_path / "out.jsonl"
    args = (src, "-o", out, *flags(server, "--batch-requests", "5"))
    # The kills are timed from when a run can have begun its work: the start-up of the
    # interpreter and the CLI, measured now (seconds on a loaded machine, not 0.5).
    began = time.monotonic()
    help_argv = [sys.executable, "-m", "llmbatch", "run", "--help"]
    subprocess.run(help_argv, env=_env(), capture_output=True, check=True)
    startup = time.monotonic() - began
    moments = []
    for _ in range(8):
        proc = _start(tmp_path, *args)
        moment = startup + rng.uniform(0.3, 1.5)
        time.sleep(moment)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        moments.append((round(moment, 2), _phase(out)))
    argv = [sys.executable, "-m", "llmbatch", "run", *map(str, args)]
    final = subprocess.run(argv, cwd=tmp_path, env=_env(), capture_output=True, timeout=120)
    assert final.returncode == 0, (seed, moments, final.stderr.decode())
    records = by_id(out)
    assert sorted(records) == sorted(r["id"] for r in items)
    assert all(r["llmbatch"]["valid"] for r in records.values())
    figures = (seed, moments)
    assert len({phase for _, phase in moments}) >= 2, figures  # the kills met the run at different stages
    assert server.stats.uploads == clean_server.stats.uploads, figures
    assert server.stats.creates == clean_server.stats.creates, figures
    assert server.stats.answers == clean_server.stats.answers, figures  # nothing answered more often


def test_a_create_whose_answer_is_lost_is_found_not_made_again(run_cli, fake_server, api_key, tmp_path):
    """The server makes the batch, then drops the connection before answering: llmbatch
    finds it by its metadata; there is one batch, and every id is written."""
    server = fake_server(lose_create_answers=1)
    src = write_jsonl(tmp_path / "in.jsonl", rows(8))
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, *flags(server))
    assert result.exit_code == 0, result.output
    assert server.stats.creates == 1
    assert len(by_id(out)) == 8


def test_no_wait_in_a_loop_exits_4_until_done(run_cli, fake_server, api_key, tmp_path):
    """--no-wait, as a cron job runs it: exit 4 while batches run, then 0; the same ids
    and answers as a run that waits."""
    server = fake_server(batch_start_delay=0.3)
    src = write_jsonl(tmp_path / "in.jsonl", rows(12, bad_every=4))
    out = tmp_path / "out.jsonl"
    codes = []
    for _ in range(200):
        result = run_cli("run", src, "-o", out, *flags(server, "--no-wait"))
        codes.append(result.exit_code)
        if result.exit_code != 4:
            break
        time.sleep(0.05)
    assert codes[0] == 4 and codes[-1] == 0, codes
    assert set(codes[:-1]) == {4}
    waited_server = fake_server()
    waited = tmp_path / "waited.jsonl"
    assert run_cli("run", src, "-o", waited, *flags(waited_server)).exit_code == 0
    answers = {
        cid: r["response"]["body"]["choices"][0]["message"]["content"] for cid, r in by_id(out).items()
    }
    expected = {
        cid: r["response"]["body"]["choices"][0]["message"]["content"] for cid, r in by_id(waited).items()
    }
    assert answers == expected


def test_an_expired_batch_writes_its_finished_half_and_resubmits_the_rest(
    run_cli, fake_server, api_key, tmp_path
):
    """A batch that expires after 5 of its 10 lines: those 5 are written from it, the
    other 5 go into a follow-up batch; with --then live they are finished live."""
    src = write_jsonl(tmp_path / "in.jsonl", rows(10))
    server = fake_server(batch_expire_after=5)
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, *flags(server))
    assert result.exit_code == 0, result.output
    records = by_id(out)
    batches = Counter(r["llmbatch"]["batch_id"] for r in records.values())
    assert len(records) == 10 and len(batches) >= 2
    assert server.stats.creates >= 2
    live_server = fake_server(batch_expire_after=5)
    live_out = tmp_path / "live.jsonl"
    result = run_cli("run", src, "-o", live_out, *flags(live_server, "--then", "live"))
    assert result.exit_code == 0, result.output
    via = Counter(r["llmbatch"]["via"] for r in by_id(live_out).values())
    assert via == {"batch": 5, "live": 5}
    assert live_server.stats.creates == 1


def test_open_batches_bind_the_output(run_cli, fake_server, api_key, tmp_path):
    """While a batch of this output is still running: a live run and a --fresh run are
    refused (exit 2, saying how to go on); --batch-api --cancel cancels it and keeps what
    it finished; a later run does the rest."""
    server = fake_server(batch_start_delay=30)
    src = write_jsonl(tmp_path / "in.jsonl", rows(6))
    out = tmp_path / "out.jsonl"
    submitted = run_cli("run", src, "-o", out, *flags(server, "--no-wait"))
    assert submitted.exit_code == 4, submitted.output
    template = ("--prompt", "{text}", "--id-field", "id", "-m", "gpt-4o-mini")
    live = run_cli("run", src, "-o", out, "--base-url", server.base_url, *template, "--no-live")
    assert live.exit_code == 2
    assert "--batch-api --cancel" in live.stderr
    fresh = run_cli("run", src, "-o", out, *flags(server, "--fresh"))
    assert fresh.exit_code == 2
    cancelled = run_cli("run", src, "-o", out, *flags(server, "--cancel"))
    assert cancelled.exit_code in (0, 1), cancelled.output
    assert server.stats.cancels == 1
    quick = fake_server()
    rest = run_cli("run", src, "-o", out, *flags(quick))
    assert rest.exit_code == 0, rest.output
    assert len(by_id(out)) == 6


def test_the_enqueued_token_limit_waits_and_submits_again(run_cli, fake_server, api_key, tmp_path):
    """A second batch refused for the enqueued-token limit is submitted again once the
    first is done; every id is written."""
    server = fake_server(enqueued_token_limit=120, batch_start_delay=0.1)
    src = write_jsonl(tmp_path / "in.jsonl", rows(20))
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, *flags(server, "--batch-requests", "10"))
    assert result.exit_code == 0, result.output
    assert len(by_id(out)) == 20
    assert server.stats.creates >= 3  # one refused, made again
    assert "enqueued" in result.stderr


def _phase(out: Path) -> str:
    """What the batch record said when the run was killed: its chunks' states."""
    import sqlite3

    db = out.with_name(out.name + ".batches.db")
    if not db.exists():
        return "starting"
    with sqlite3.connect(db) as conn:
        states = sorted({state for (state,) in conn.execute("SELECT state FROM chunks")})
    return "+".join(states) or "splitting"


def test_a_rerun_can_send_a_written_item_through_a_batch_again(run_cli, fake_server, api_key, tmp_path):
    """An item written by an earlier batch run and asked again (--redo invalid) goes
    into a new batch; --fresh starts over, the batch record included."""
    server = fake_server()
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "p", "text": "plain words"}, *rows(3)])
    out = tmp_path / "out.jsonl"
    first = run_cli("run", src, "-o", out, *flags(server, "--max-requests", "1"))
    assert first.exit_code == 1  # "p" is not JSON: invalid
    again = run_cli("run", src, "-o", out, *flags(server, "--max-requests", "1", "--redo", "invalid"))
    assert again.exit_code == 1, again.output
    assert server.stats.answers["p"] == 2
    assert len(by_id(out)) == 4
    fresh = run_cli("run", src, "-o", out, *flags(server, "--fresh", "--max-requests", "1"))
    assert fresh.exit_code == 1, fresh.output
    assert len(by_id(out)) == 4
