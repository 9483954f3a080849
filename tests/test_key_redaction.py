"""The API key never leaves through the server's own words, tried as a user would: a
Batch API run (and a live run through the SDK's transport) against a server whose
errors quote our Authorization header back, `llmbatch run` in a process of its own;
the key is on no stream and in no file it leaves behind, the batch state included."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from conftest import RecordingServer, read_jsonl, write_jsonl

from llmbatch.testing.api import error_body

KEY = "sk-test-SECRET-9d8c7b6a5f4e3d2c1b0a"
ITEMS = 6


def rows() -> list[object]:
    good: list[object] = [
        {"id": f"r{i}", "text": "@fake " + orjson.dumps({"answer": {"n": i}}).decode()} for i in range(ITEMS)
    ]
    return [*good, "not json"]  # a reject too: its file is looked at as well


@pytest.fixture
def run_done(
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """`run_done(*args)`: `llmbatch run ARGS` in tmp_path, with KEY as OPENAI_API_KEY;
    returns once it exits."""

    def run(*args: object) -> subprocess.CompletedProcess[bytes]:
        proc = spawn(*args, key=KEY)
        out, err = proc.communicate(timeout=120)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    return run


def everything_left(tmp_path: Path, result: subprocess.CompletedProcess[bytes]) -> tuple[bytes, list[str]]:
    """The run's streams and every file under tmp_path (SQLite's -wal and -shm too, when
    they are there), as bytes; and the names of the files."""
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    return result.stdout + result.stderr + b"".join(p.read_bytes() for p in files), [p.name for p in files]


TEMPLATE = ("--prompt", "{text}", "--id-field", "id", "-m", "gpt-4o-mini", "--validate", "json", "--no-live")


@pytest.mark.parametrize(("status", "exit_code"), [(500, 1), (400, 3)])
def test_a_batch_create_refused_with_the_key_quoted_leaks_it_nowhere(
    run_done, fake_server, tmp_path, status, exit_code
):
    """The first batch create is refused with a message quoting `Authorization: Bearer
    <key>` (500: retried, and the run finishes, exit 1 for its bad line; 400: the run
    stops, exit 3): the message is told minus the key, and the key is on no stream and
    in no file: output, rejects, the batch state (batches.db and its journal)."""
    write_jsonl(tmp_path / "in.jsonl", rows())
    server = fake_server(api_key=KEY, fail_creates=1, fail_create_status=status)
    result = run_done(
        "in.jsonl", "-o", "out.jsonl", "--batch-api", "--base-url", server.base_url, *TEMPLATE,
        "--poll-every", "0.05",
    )  # fmt: skip
    stderr = result.stderr.decode()
    assert result.returncode == exit_code, stderr
    assert server.batches.refused == 1
    assert f"Bearer {KEY}" in server.stats.authorizations  # it was sent, to the server only
    assert f"HTTP {status}: upstream refused the request with Authorization: Bearer [redacted]" in stderr
    if status == 500:
        assert server.stats.creates == 1
        records = read_jsonl(tmp_path / "out.jsonl")
        assert len(records) == ITEMS and all(r["llmbatch"]["valid"] for r in records)
    seen, names = everything_left(tmp_path, result)
    assert {"out.jsonl.batches.db", "out.jsonl.rejects.jsonl"} <= set(names), names
    assert KEY.encode() not in seen
    assert KEY[8:].encode() not in seen


class QuotingServer(RecordingServer):
    """Answers every chat request 500, its message quoting our Authorization header."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/chat/completions"):
            quoted = f"upstream failed for Authorization: {request.headers.get('Authorization')}"
            body = error_body(quoted, "server_error", None)
            return web.Response(status=500, body=body, content_type="application/json")
        return await super().handle(request)


@pytest.mark.parametrize("transport", ["sdk", "fast"])
def test_a_live_500_quoting_the_key_leaks_it_nowhere(run_done, tmp_path, transport):
    """Every live answer is a 500 quoting `Authorization: Bearer <key>` (through the
    SDK's own transport and llmbatch's): each item is written failed with the message
    minus the key, and the key is on no stream and in no file."""
    write_jsonl(tmp_path / "in.jsonl", rows())
    server = QuotingServer().start()
    try:
        result = run_done(
            "in.jsonl", "-o", "out.jsonl", "--base-url", server.base_url, *TEMPLATE,
            "--transport", transport, "--max-retries", "1",
        )  # fmt: skip
    finally:
        server.stop()
    assert result.returncode == 1, result.stderr.decode()
    records = read_jsonl(tmp_path / "out.jsonl")
    assert len(records) == ITEMS
    assert all(r["error"]["message"].endswith("Authorization: Bearer [redacted]") for r in records)
    seen, names = everything_left(tmp_path, result)
    assert "out.jsonl.rejects.jsonl" in names
    assert KEY.encode() not in seen
    assert KEY[8:].encode() not in seen
