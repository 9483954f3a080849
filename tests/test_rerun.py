"""Reruns that tell the truth, through the CLI over loopback HTTP: failed items are
redone, stale answers stop the run, a cache pays once, two runs never share an output,
a trial run does the first N, and every id ends on exactly one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import by_id, read_jsonl, write_jsonl

pytestmark = pytest.mark.usefixtures("no_backoff")

KEY = "sk-test-rerun-3b1f"


def row(i: int, prompt: str = "Say {text}") -> dict[str, Any]:
    return {"id": f"r{i}", "text": f"item {i}"}


def rows(n: int) -> list[dict[str, Any]]:
    return [row(i) for i in range(n)]


def flags(server: Any, *extra: object, prompt: str = "Say {text}") -> list[object]:
    return ["--base-url", server.base_url, "--prompt", prompt, "--id-field", "id", "-m", "gpt-4o-mini",
            "--no-live", *extra]  # fmt: skip


def lines(out: Path) -> list[dict[str, Any]]:
    return read_jsonl(out)


def summary(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())


@pytest.fixture
def run(run_cli, api_key):
    def invoke(*args: object) -> Any:
        return run_cli("run", *args)

    return invoke


def test_failed_items_are_redone_on_the_rerun_and_it_exits_0(run, fake_server, tmp_path):
    """A server that answers every request with 503 (retries run out: written failed),
    then a healthy one: the rerun redoes exactly the failed items and exits 0; one line
    per id, all valid."""
    src = write_jsonl(tmp_path / "in.jsonl", rows(24))
    out = tmp_path / "out.jsonl"
    broken = fake_server(fault_rate=1.0, faults=(503,))
    first = run(src, "-o", out, *flags(broken, "--max-retries", "0"))
    assert first.exit_code == 1, first.output
    assert {r["llmbatch"]["state"] for r in lines(out)} == {"failed"}
    assert {r["llmbatch"]["fault"] for r in lines(out)} == {"transient"}

    healthy = fake_server()
    again = run(src, "-o", out, *flags(healthy), "--summary-json", tmp_path / "s.json")
    assert again.exit_code == 0, again.output
    assert healthy.stats.requests == 24
    records = by_id(out)
    assert len(records) == 24
    assert all(r["llmbatch"]["valid"] for r in records.values())
    assert summary(tmp_path / "s.json")["redone"] == {"transient": 24}
    third = run(src, "-o", out, *flags(healthy))
    assert third.exit_code == 0 and healthy.stats.requests == 24  # nothing left to do


def test_a_changed_prompt_stops_the_run_before_anything_is_sent(run, fake_server, tmp_path):
    """Prompt changed, then rerun: exit 2 before any request, naming the count and both
    ways on; --redo stale asks exactly those again; --keep-stale sends nothing."""
    server = fake_server()
    src = write_jsonl(tmp_path / "in.jsonl", rows(10))
    out = tmp_path / "out.jsonl"
    assert run(src, "-o", out, *flags(server)).exit_code == 0
    assert server.stats.requests == 10

    write_jsonl(src, rows(13))  # three new rows, and a new prompt for all
    changed = run(src, "-o", out, *flags(server, prompt="Please say {text}"))
    assert changed.exit_code == 2, changed.output
    assert "10 answers" in changed.stderr
    assert "--redo stale" in changed.stderr and "--keep-stale" in changed.stderr
    assert server.stats.requests == 10
    assert len(lines(out)) == 10

    kept = run(src, "-o", out, *flags(server, "--keep-stale", prompt="Please say {text}"))
    assert kept.exit_code == 0, kept.output
    assert server.stats.requests == 13  # only the three new rows
    redone = run(src, "-o", out, *flags(server, "--redo", "stale", prompt="Please say {text}"))
    assert redone.exit_code == 0, redone.output
    assert server.stats.requests == 23  # exactly the ten stale ones
    records = by_id(out)
    assert len(records) == 13
    asked = [b["messages"][0]["content"] for b in server.bodies[13:]]
    assert sorted(asked) == sorted(f"Please say item {i}" for i in range(10))


def test_a_changed_model_or_param_is_stale_too(run, fake_server, tmp_path):
    """--model and --param are part of the request: changing them is stale."""
    server = fake_server()
    src = write_jsonl(tmp_path / "in.jsonl", rows(4))
    out = tmp_path / "out.jsonl"
    assert run(src, "-o", out, *flags(server)).exit_code == 0
    for change in (["-m", "gpt-4o"], ["--param", "temperature=0"]):
        result = run(src, "-o", out, *flags(server), *change)
        assert result.exit_code == 2, (change, result.output)
        assert "4 answers" in result.stderr
    assert server.stats.requests == 4


def test_invalid_and_refused_items_are_kept_unless_asked(run, fake_server, tmp_path):
    """An invalid answer (after --max-requests) and a refused request (400) are kept by
    a plain rerun, which exits 1 again; --redo invalid,failed asks them again."""
    server = fake_server()
    items = [
        {"id": "ok", "text": '@fake {"answer": {"a": 1}}'},
        {"id": "bad", "text": '@fake {"bad": 9}'},
        {"id": "no", "text": '@fake {"fail": [400]}'},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", items)
    out = tmp_path / "out.jsonl"
    first = run(src, "-o", out, *flags(server, "--validate", "json", "--max-requests", "2"))
    assert first.exit_code == 1
    states = {cid: r["llmbatch"]["state"] for cid, r in by_id(out).items()}
    assert states == {"ok": "valid", "bad": "invalid", "no": "failed"}
    sent = server.stats.requests
    plain = run(src, "-o", out, *flags(server, "--validate", "json", "--max-requests", "2"))
    assert plain.exit_code == 1, plain.output
    assert server.stats.requests == sent  # kept, not paid for again
    again = run(
        src,
        "-o",
        out,
        *flags(server, "--validate", "json", "--max-requests", "2", "--redo", "invalid,failed"),
    )
    assert server.stats.requests > sent
    assert again.exit_code == 1  # the model still answers the same: invalid again, 400 again
    assert len(by_id(out)) == 3


def test_a_refused_request_is_redone_when_the_server_changed(run, fake_server, tmp_path):
    """A 400 from one server is not the verdict of another: pointed elsewhere, the rerun
    asks again without being told."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "x", "text": '@fake {"fail": [400]}'}])
    out = tmp_path / "out.jsonl"
    first_server = fake_server()
    assert run(src, "-o", out, *flags(first_server)).exit_code == 1
    before = by_id(out)["x"]["llmbatch"]["server"]
    assert run(src, "-o", out, *flags(first_server)).exit_code == 1
    assert first_server.stats.requests == 1  # same server: kept
    other = fake_server()
    run(src, "-o", out, *flags(other))
    assert other.stats.requests == 1  # asked again (and refused again: a scripted 400)
    assert by_id(out)["x"]["llmbatch"]["server"] != before


def test_revalidate_asks_again_only_what_todays_validators_reject(run, fake_server, tmp_path):
    """--revalidate runs the validators over the answers kept, with no request; those
    that now fail are asked again."""
    server = fake_server()
    items = [{"id": "j", "text": '@fake {"answer": {"a": 1}}'}, {"id": "p", "text": "plain words"}]
    src = write_jsonl(tmp_path / "in.jsonl", items)
    out = tmp_path / "out.jsonl"
    assert run(src, "-o", out, *flags(server)).exit_code == 0
    assert server.stats.requests == 2
    result = run(src, "-o", out, *flags(server, "--revalidate", "--validate", "json", "--max-requests", "1"))
    assert server.stats.requests == 3  # only "p" asked again: its answer is not JSON
    assert server.bodies[-1]["messages"][0]["content"] == "Say plain words"
    assert result.exit_code == 1
    assert by_id(out)["j"]["llmbatch"]["valid"] and not by_id(out)["p"]["llmbatch"]["valid"]


def test_the_cache_answers_a_second_output_without_a_request(run, fake_server, tmp_path):
    """--cache c.db into out1, then the same input into out2 with the same cache: the
    server sees nothing; out2 has every id, valid; the summary says cached."""
    server = fake_server()
    src = write_jsonl(tmp_path / "in.jsonl", rows(20))
    cache = tmp_path / "c.db"
    assert run(src, "-o", tmp_path / "out1.jsonl", *flags(server, "--cache", cache)).exit_code == 0
    assert server.stats.requests == 20
    result = run(
        src,
        "-o",
        tmp_path / "out2.jsonl",
        *flags(server, "--cache", cache),
        "--summary-json",
        tmp_path / "s.json",
    )
    assert result.exit_code == 0, result.output
    assert server.stats.requests == 20
    out2 = by_id(tmp_path / "out2.jsonl")
    assert sorted(out2) == sorted(f"r{i}" for i in range(20))
    assert all(r["llmbatch"]["valid"] and r["llmbatch"]["via"] == "cached" for r in out2.values())
    assert summary(tmp_path / "s.json")["cached"] == 20
    assert "cached" in result.stderr
    assert KEY not in cache.read_bytes().decode("latin-1")


def test_identical_requests_in_one_run_are_sent_once_with_a_cache(run, fake_server, tmp_path):
    """Ten items that make the same request: with --cache, one request answers all."""
    server = fake_server(latency_ms=50)
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{i}", "text": "same"} for i in range(10)])
    out = tmp_path / "out.jsonl"
    result = run(src, "-o", out, *flags(server, "--cache", tmp_path / "c.db"))
    assert result.exit_code == 0, result.output
    assert server.stats.requests == 1
    assert len(by_id(out)) == 10


def test_max_items_does_the_first_n_then_the_rest(run, fake_server, tmp_path):
    """--max-items 20, then a run without it: 20 lines, then all; one request per item."""
    server = fake_server()
    src = write_jsonl(tmp_path / "in.jsonl", rows(50))
    out = tmp_path / "out.jsonl"
    trial = run(src, "-o", out, *flags(server, "--max-items", "20"))
    assert trial.exit_code == 0, trial.output
    assert sorted(by_id(out)) == sorted(f"r{i}" for i in range(20))
    second = run(src, "-o", out, *flags(server, "--max-items", "20"))
    assert second.exit_code == 0
    assert sorted(by_id(out)) == sorted(f"r{i}" for i in range(40))
    rest = run(src, "-o", out, *flags(server))
    assert rest.exit_code == 0
    assert len(by_id(out)) == 50
    assert server.stats.requests == 50


def test_fresh_refuses_a_file_llmbatch_did_not_write(run, fake_server, tmp_path):
    """--fresh -o notes.txt would wipe someone's notes: refused unless --force."""
    server = fake_server()
    src = write_jsonl(tmp_path / "in.jsonl", rows(2))
    notes = tmp_path / "notes.txt"
    notes.write_text("my precious notes\n")
    refused = run(src, "-o", notes, *flags(server, "--fresh"))
    assert refused.exit_code == 2
    assert "does not look like an llmbatch output" in refused.stderr and "--force" in refused.stderr
    assert notes.read_text() == "my precious notes\n"
    assert server.stats.requests == 0
    forced = run(src, "-o", notes, *flags(server, "--fresh", "--force"))
    assert forced.exit_code == 0
    assert len(lines(notes)) == 2


def test_every_line_carries_what_a_rerun_needs(run, fake_server, tmp_path):
    """Both formats carry the fingerprint, the state, the server and how it was answered."""
    server = fake_server()
    src = write_jsonl(tmp_path / "in.jsonl", rows(2))
    run(src, "-o", tmp_path / "b.jsonl", *flags(server))
    run(src, "-o", tmp_path / "m.jsonl", *flags(server, "--merged"))
    # The same item in both (lines come in completion order).
    b_line = lines(tmp_path / "b.jsonl")[0]
    b = b_line["llmbatch"]
    m = next(r for r in lines(tmp_path / "m.jsonl") if r["llm_custom_id"] == b_line["custom_id"])
    assert len(b["fp"]) == 16 and b["state"] == "valid" and b["via"] == "live" and len(b["server"]) == 8
    assert (m["llm_fp"], m["llm_state"], m["llm_via"], m["llm_server"]) == (
        b["fp"],
        "valid",
        "live",
        b["server"],
    )
    assert server.base_url not in (tmp_path / "b.jsonl").read_text()


def test_a_merged_output_refuses_a_batch_rerun(run, fake_server, tmp_path):
    """A resume that finds the other format than the one asked for is exit 2."""
    server = fake_server()
    src = write_jsonl(tmp_path / "in.jsonl", rows(2))
    out = tmp_path / "out.jsonl"
    assert run(src, "-o", out, *flags(server, "--merged")).exit_code == 0
    result = run(src, "-o", out, *flags(server))
    assert result.exit_code == 2
    assert "merged" in result.stderr


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("OPENAI_")}
    env.update(OPENAI_API_KEY=KEY, PYTHONUNBUFFERED="1")
    return env


def _start(tmp_path: Path, *args: object) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "llmbatch", "run", *map(str, args)]
    return subprocess.Popen(argv, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_runs_on_one_output_the_second_exits_2_at_once(fake_server, tmp_path):
    """Two runs started together on one output: the second exits 2 at once naming the
    first's pid, the first completes, each id once."""
    server = fake_server(latency_ms=100)
    src = write_jsonl(tmp_path / "in.jsonl", rows(60))
    out = tmp_path / "out.jsonl"
    # 60 items, 2 at once, 100 ms each: about 3 s, so the second process starts while
    # the first still runs even on a loaded machine.
    first = _start(tmp_path, src, "-o", out, *flags(server, "-c", "2"))
    deadline = time.monotonic() + 30
    while server.stats.requests == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    second = _start(tmp_path, src, "-o", out, *flags(server))
    _, err = second.communicate(timeout=30)
    assert second.returncode == 2, err.decode()
    assert time.monotonic() - started < 10
    assert f"being written by another llmbatch run (pid {first.pid})" in err.decode()
    first.communicate(timeout=60)
    assert first.returncode == 0
    assert len(by_id(out)) == 60
    assert server.stats.requests == 60


def test_sigkill_during_reruns_and_compaction_keeps_every_id_once(fake_server, tmp_path):
    """A run that redoes thousands of failed items, killed (SIGKILL) at five or more
    moments, one of them while it compacts the output; then a run to the end: each id
    exactly once, all valid."""
    n = 30_000
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": "x" * 200 + str(i)} for i in range(n)])
    out = tmp_path / "out.jsonl"
    broken = fake_server(fault_rate=1.0, faults=(503,))
    first = _start(tmp_path, src, "-o", out, *flags(broken, "--max-retries", "0", "-c", "64", "-q"))
    first.communicate(timeout=300)
    assert first.returncode == 1
    assert len(lines(out)) == n
    healthy = fake_server(latency_ms=1)
    args = (src, "-o", out, *flags(healthy, "-c", "64", "-q"))
    kills = 0
    in_compaction = 0
    compacting = out.with_name(out.name + ".compacting")
    for delay in (0.1, 0.3, 0.6, 1.0):  # while redoing: once requests are going out
        sent = healthy.stats.requests
        proc = _start(tmp_path, *args)
        deadline = time.monotonic() + 60
        while healthy.stats.requests == sent and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        kills += 1
    # Now kill while compacting: a rerun with (almost) nothing left to send.
    for _ in range(20):
        proc = _start(tmp_path, *args)
        deadline = time.monotonic() + 300
        while proc.poll() is None and not compacting.exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        if proc.poll() is None and compacting.exists():
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)
            kills += 1
            in_compaction += 1
            break
        proc.communicate(timeout=60)
    assert kills >= 5 and in_compaction == 1, (kills, in_compaction)
    final = _start(tmp_path, *args)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()
    records = by_id(out)
    assert len(records) == n
    assert all(r["llmbatch"]["valid"] for r in records.values())
    assert not compacting.exists()
