"""A good citizen of the shell, through the CLI over loopback: a spending cap that holds,
results on standard output, compressed outputs, errors told once, an ordered output,
and a report of what an output holds."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import read_jsonl, write_jsonl

PRICE = ("--price-in", "1", "--price-out", "2")  # USD per million tokens


def chat_rows(n: int, rng: random.Random) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "text": "word " * rng.randint(5, 400)} for i in range(n)]


def flags(server: Any, *extra: object) -> list[object]:
    return ["--base-url", server.base_url, "--prompt", "Say {text}", "--id-field", "id", "-m", "gpt-4o-mini",
            "--no-live", *extra]  # fmt: skip


def served_cost(server: Any) -> float:
    """What the server's own usage count says was spent, at PRICE."""
    s = server.stats
    return (s.prompt_tokens * 1 + s.completion_tokens * 2) / 1e6


def test_the_spending_cap_holds_and_a_higher_one_finishes(run_cli, fake_server, api_key, tmp_path):
    """Random prompt and answer lengths and a cap that binds halfway: the run stops with
    exit 3 and says so, the server's own usage prices at most the cap; a rerun with a
    higher cap finishes the file."""
    rng = random.Random(7)
    rows = chat_rows(60, rng)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    probe = fake_server()
    whole = run_cli("run", src, "-o", tmp_path / "probe.jsonl", *flags(probe, *PRICE, "--max-tokens", "150"))
    assert whole.exit_code == 0, whole.output
    cap = served_cost(probe) / 2

    server = fake_server(latency_ms=20)
    capped = run_cli(
        "run", src, "-o", out, *flags(server, *PRICE, "--max-tokens", "150", "--max-cost", f"{cap:.6f}")
    )
    assert capped.exit_code == 3, capped.output
    assert "spending cap reached" in capped.stderr
    assert served_cost(server) <= cap
    assert 0 < len(read_jsonl(out)) < 60
    higher = run_cli("run", src, "-o", out, *flags(server, *PRICE, "--max-tokens", "150", "--max-cost", "1"))
    assert higher.exit_code == 0, higher.output
    assert len(read_jsonl(out)) == 60


def test_the_cap_refuses_what_it_cannot_bound(run_cli, fake_server, api_key, tmp_path):
    """No price for the model, or no answer ceiling: exit 2 with the way out, nothing sent."""
    server = fake_server()
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(3, random.Random(1)))
    unpriced_flags = flags(server, "-m", "my-own-model", "--max-cost", "1", "--max-tokens", "10")
    unpriced = run_cli("run", src, "-o", tmp_path / "o.jsonl", *unpriced_flags)
    assert unpriced.exit_code == 2
    assert "--price-in" in unpriced.stderr
    unbounded = run_cli("run", src, "-o", tmp_path / "o.jsonl", *flags(server, *PRICE, "--max-cost", "1"))
    assert unbounded.exit_code == 2
    assert "--max-tokens" in unbounded.stderr
    assert server.stats.requests == 0


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nothing_listening_stops_within_the_grace_and_says_why(run_cli, api_key, tmp_path):
    """A --base-url where nothing listens: exit 3 a little after --connect-grace, not
    after every row's retries, with "connection refused" told on stderr."""
    import time

    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(24, random.Random(2)))
    started = time.monotonic()
    nowhere = f"http://127.0.0.1:{_free_port()}/v1"
    template = ("--prompt", "Say {text}", "--id-field", "id", "-m", "gpt-4o-mini")
    result = run_cli("run", src, "-o", tmp_path / "out.jsonl", "--base-url", nowhere, *template,
                     "--connect-grace", "1", "--no-live")  # fmt: skip
    took = time.monotonic() - started
    assert result.exit_code == 3, result.output
    assert "connection refused" in result.stderr
    assert "nothing answered in 1s" in result.stderr
    assert took < 1 + 10
    assert result.stderr.count("error: connection_refused") == 1  # told once, then counted


def test_a_wrong_endpoint_is_told_once_with_the_servers_message(run_cli, fake_server, api_key, tmp_path):
    """Every item refused with the same 404: the first is told on stderr with the
    server's text, the rest are counted; every item is written failed."""
    server = fake_server()
    rows = [{"custom_id": f"r{i}", "url": "/v1/chat/completions", "body": {"model": "m", "messages": []}}
            for i in range(5)]  # fmt: skip
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    base = server.base_url.removesuffix("/v1") + "/nope/v1"
    result = run_cli("run", src, "-o", tmp_path / "out.jsonl", "--base-url", base, "--no-live", "-q")
    assert result.exit_code == 1, result.output
    assert result.stderr.count("error: http_404") + result.stderr.count("error: invalid_request") == 1
    assert "Unknown route" in result.stderr
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 5


def _llmbatch(*args: object) -> list[str]:
    """The command line of `python -m llmbatch ARGS...` (a flag list may be spread in)."""
    import sys

    return [sys.executable, "-m", "llmbatch", *map(str, args)]


def _env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("OPENAI_")}
    env.update(OPENAI_API_KEY="sk-test-shell", PYTHONUNBUFFERED="1")
    return env


def test_results_on_standard_output_for_a_pipe(fake_server, tmp_path):
    """`-o -`: one result line per item on stdout (ready for jq), everything else on
    stderr, rejects there too as one line each; no file is made."""
    import subprocess

    server = fake_server()
    rows = [*chat_rows(5, random.Random(3)), {"id": "x"}]  # the last one misses its template field
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    cmd = _llmbatch("run", src, "-o", "-", *flags(server))
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, timeout=60)
    assert done.returncode == 1, done.stderr.decode()
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert sorted(r["custom_id"] for r in lines) == [f"r{i}" for i in range(5)]
    assert b"rejected line 6: missing template field: text" in done.stderr
    assert b"rejected lines are listed in" not in done.stderr  # they were told, no file was made
    assert not any(p.name.startswith("-") for p in tmp_path.iterdir())


def test_a_reader_that_stops_early_is_told_as_such(fake_server, tmp_path):
    """`-o - | head -2`: the run stops (exit 3) saying standard output was closed, not
    that a disk is full or that a rerun resumes; what reached the reader is whole lines."""
    import subprocess

    server = fake_server(latency_ms=1)
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(3000, random.Random(8)))
    cmd = _llmbatch("run", src, "-o", "-", *flags(server, "-q"))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    first = [proc.stdout.readline() for _ in range(2)]
    proc.stdout.close()  # as `head -2` does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err.decode()
    assert b"standard output was closed by its reader" in err
    assert b"make room" not in err
    assert all(orjson.loads(line)["custom_id"] for line in first)


def test_standard_output_refuses_what_needs_a_file(run_cli, tmp_path):
    """There is no resume on stdout: --fresh, --redo, --revalidate are exit 2, saying why."""
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(2, random.Random(4)))
    for flag in (["--fresh"], ["--redo", "failed"], ["--revalidate"], ["--keep-stale"]):
        result = run_cli("run", src, "-o", "-", "--provider", "fake", "--prompt", "{text}", *flag)
        assert result.exit_code == 2, flag
        assert "with -o - every run starts afresh" in result.stderr


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_a_compressed_output_resumes_after_sigkill(fake_server, tmp_path, suffix):
    """A .gz / .zst output killed mid-run (SIGKILL) and resumed: a valid compressed file
    (zcat / zstd read it whole), each id once, all valid."""
    import signal
    import subprocess
    import time

    server = fake_server(latency_ms=5)
    rows = chat_rows(3000, random.Random(5))
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / f"out.jsonl{suffix}"
    cmd = _llmbatch("run", src, "-o", out, *flags(server, "-c", "32", "-q"))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while (not out.exists() or out.stat().st_size < 20_000) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    with out.open("ab") as f:  # as if killed halfway through writing a member
        f.write(b"\x1f\x8b\x08\x00torn" if suffix == ".gz" else b"\x28\xb5\x2f\xfdtorn")
    again = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr.decode()
    text = _decompress(out.read_bytes(), suffix)
    records = [orjson.loads(line) for line in text.splitlines()]
    ids = [r["custom_id"] for r in records]
    assert len(ids) == len(set(ids)) == 3000
    assert all(r["llmbatch"]["valid"] for r in records)


def _decompress(data: bytes, suffix: str) -> bytes:
    import gzip

    import zstandard

    if suffix == ".gz":
        return gzip.decompress(data)  # every member, or an error
    return zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read()


def test_ordered_output_is_in_input_order_file_and_stdout(run_cli, fake_server, api_key, tmp_path):
    """--ordered with random server latency: the lines come out in input order, into a
    file (ordered at the end) and on standard output (a reorder buffer)."""
    import subprocess

    server = fake_server(latency_ms=1, jitter_ms=40, seed=3)
    rows = chat_rows(200, random.Random(6))
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    unordered = run_cli("run", src, "-o", tmp_path / "plain.jsonl", *flags(server, "-c", "32"))
    assert unordered.exit_code == 0
    plain = [r["llmbatch"]["line"] for r in read_jsonl(tmp_path / "plain.jsonl")]
    assert plain != sorted(plain)  # the latency really shuffles them
    result = run_cli("run", src, "-o", out, *flags(server, "-c", "32", "--ordered"))
    assert result.exit_code == 0, result.output
    assert [r["custom_id"] for r in read_jsonl(out)] == [f"r{i}" for i in range(200)]
    cmd = _llmbatch("run", src, "-o", "-", *flags(server, "-c", "32", "--ordered"))
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert [orjson.loads(x)["custom_id"] for x in done.stdout.splitlines()] == [f"r{i}" for i in range(200)]


def test_the_external_sort_sorts_beyond_memory():
    """Lines sorted by key through spilled runs (a tiny run size forces many), stable."""
    from llmbatch.files.ordering import sorted_lines

    rng = random.Random(8)
    keyed = [(rng.randrange(500), f"{i}\n".encode()) for i in range(5000)]
    got = list(sorted_lines(iter(keyed), run_bytes=1000))
    expected = [line for _, line in sorted(keyed, key=lambda kv: kv[0])]  # sorted() is stable
    assert got == expected


def test_report_reads_finished_outputs(run_cli, fake_server, api_key, tmp_path):
    """`llmbatch report` of two outputs (one compressed): counts, failures by code,
    tokens and cost at the given price, invalid reasons, latency percentiles; --json too."""
    rows = [
        {"id": "ok1", "text": '@fake {"answer": {"a": 1}}'},
        {"id": "ok2", "text": '@fake {"answer": {"b": 2}}'},
        {"id": "bad", "text": "plain"},
        {"id": "no", "text": '@fake {"fail": [400]}'},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    for out in ("a.jsonl", "b.jsonl.gz"):  # a server each: each refuses "no" once
        server = fake_server(latency_ms=5)
        run_cli("run", src, "-o", tmp_path / out, *flags(server, "--validate", "json", "--max-requests", "1"))
    shown = run_cli("report", tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz", *PRICE)
    assert shown.exit_code == 0, shown.output
    assert "valid:        4   invalid: 2   failed: 2" in shown.stdout
    assert "answer is not JSON" in shown.stdout
    assert "p50" in shown.stdout
    data = orjson.loads(run_cli("report", tmp_path / "a.jsonl", "--json", *PRICE).stdout)
    assert (data["valid"], data["invalid"], data["failed"]) == (2, 1, 1)
    assert sum(data["failed_by_code"].values()) == 1  # by the code the server gave
    expected = (data["prompt_tokens"] * 1 + data["completion_tokens"] * 2) / 1e6
    assert data["cost_usd"] == pytest.approx(expected, abs=1e-6)
    assert run_cli("report", tmp_path / "missing.jsonl").exit_code == 2


def test_help_is_grouped_with_defaults_and_there_is_a_version(run_cli):
    """`run --help` groups its options into panels and shows defaults; --version works."""
    import llmbatch

    shown = run_cli("run", "--help", env={"COLUMNS": "80"})
    assert shown.exit_code == 0
    panels = ("Input", "Requests", "Limits and retries", "Validation", "Output", "Reruns and cache")
    for panel in (*panels, "Display", "Batch API", "Offline model"):
        assert f"─ {panel}" in shown.stdout, panel
    assert "[default: 64]" in shown.stdout
    assert "--max-requests" in shown.stdout and "…" not in shown.stdout  # no name cut off
    version = run_cli("--version")
    assert version.exit_code == 0 and version.stdout.strip() == f"llmbatch {llmbatch.__version__}"


def test_results_are_never_appended_to_a_file_llmbatch_did_not_write(run_cli, fake_server, api_key, tmp_path):
    """`-o notes.jsonl` naming someone else's file: exit 2 before anything is sent, the
    file untouched; with --force the results are appended to it."""
    server = fake_server()
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(3, random.Random(9)))
    theirs = write_jsonl(tmp_path / "notes.jsonl", [{"note": "mine"}, {"note": "also mine"}])
    before = theirs.read_bytes()
    refused = run_cli("run", src, "-o", theirs, *flags(server))
    assert refused.exit_code == 2
    assert "does not look like an llmbatch output" in refused.stderr and "--force" in refused.stderr
    assert theirs.read_bytes() == before and server.stats.requests == 0
    forced = run_cli("run", src, "-o", theirs, *flags(server, "--force"))
    assert forced.exit_code == 0, forced.output
    assert theirs.read_bytes().startswith(before) and len(read_jsonl(theirs)) == 5


def test_keep_stale_and_redo_stale_together_are_refused(run_cli, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(2, random.Random(10)))
    out = tmp_path / "out.jsonl"
    for redo in ("stale", "all"):
        args = ("--provider", "fake", "--prompt", "{text}", "--keep-stale", "--redo", redo)
        result = run_cli("run", src, "-o", out, *args)
        assert result.exit_code == 2, redo
        assert "contradict" in result.stderr


def test_an_output_whose_name_and_content_disagree_is_refused_not_cut(run_cli, tmp_path):
    """Plain text named .gz: read as gzip it would all look torn and be cut to nothing;
    it is refused (exit 2) and left as it was."""
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(2, random.Random(11)))
    out = tmp_path / "out.jsonl.gz"
    out.write_bytes(src.read_bytes())
    before = out.read_bytes()
    result = run_cli("run", src, "-o", out, "--provider", "fake", "--prompt", "{text}", "--id-field", "id")
    assert result.exit_code == 2
    assert "holds plain text, but its name says gzip" in result.stderr
    assert out.read_bytes() == before
