"""--provider anthropic --batch-api: Message Batches through the CLI against the fake
Anthropic API, killed at the moments that matter and run again to the end."""

from __future__ import annotations

import os
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
from typer.testing import Result

from llmbatch.providers.anthropic_batches import batch_id_of
from llmbatch.testing.anthropic import AnthropicServer
from llmbatch.testing.reviews import REVIEW_SCHEMA as SCHEMA
from tests.conftest import ANTHROPIC_KEY as KEY
from tests.conftest import by_id, reap, write_jsonl


def odd_id(i: int) -> str:
    """Every fifth id is one Anthropic refuses: too long, or with other characters."""
    if i % 10 == 0:
        return f"review/{i} · " + "ü" * 70
    if i % 5 == 0:
        return f"r-{i}-" + "x" * 80
    return f"r{i}"


@pytest.fixture
def files(tmp_path: Path) -> Callable[[int], tuple[Path, Path]]:
    def make(n: int) -> tuple[Path, Path]:
        rows = [{"id": odd_id(i), "text": f"review {i}: it works and I like it"} for i in range(n)]
        schema = tmp_path / "s.json"
        schema.write_bytes(orjson.dumps(SCHEMA))
        return write_jsonl(tmp_path / "in.jsonl", rows), schema

    return make


def args(server: AnthropicServer, inp: Path, schema: Path, out: Path, *more: object) -> list[object]:
    return [
        inp, "-o", out, "--provider", "anthropic", "--base-url", server.base_url, "-m", "claude-haiku-4-5",
        "--prompt", "Rate: {text}", "--id-field", "id", "--schema", schema, "--batch-api",
        "--poll-every", "0.2", "--no-live", *more,
    ]  # fmt: skip


@pytest.fixture
def claude(run_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    return lambda *a: run_cli("run", *a)


def assert_each_once(out: Path, n: int) -> dict[str, dict[str, Any]]:
    rows = by_id(out)
    assert sorted(rows) == sorted(odd_id(i) for i in range(n))
    return rows


def assert_no_batch_twice(server: AnthropicServer) -> None:
    """No request went in two batches of the same round: each batch's ids are its own,
    but for the follow-ups of what a batch errored or expired."""
    seen: Counter[str] = Counter()
    for ids in server.stats.batch_ids:
        seen.update(ids)
    twice = [cid for cid, k in seen.items() if k > 1]
    assert len(twice) <= server.stats.batch_requests - len(seen)
    sizes = Counter(server.stats.batch_ids)
    assert all(k == 1 for k in sizes.values()), "a batch was created twice"


def test_two_thousand_items_in_batches_of_500_with_follow_ups(
    anthropic: Callable[..., AnthropicServer], claude: Callable[..., Result], files: Any, tmp_path: Path
) -> None:
    """2,000 templated items, --batch-requests 500: four batches of at most 500, errored
    and expired items through a follow-up batch, every id once (odd and long ids as they
    were), valid, at the batch price."""
    server = anthropic(errored_share=0.03, expired_share=0.03)
    inp, schema = files(2000)
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    result = claude(*args(server, inp, schema, out, "--batch-requests", "500", "--summary-json", summary))
    assert result.exit_code == 0, result.stderr
    rows = assert_each_once(out, 2000)
    assert all(r["llmbatch"]["state"] == "valid" and r["llmbatch"]["via"] == "batch" for r in rows.values())
    assert server.stats.batch_sizes[:4] == [500, 500, 500, 500]
    assert len(server.stats.batch_sizes) > 4  # the follow-ups of what errored or expired
    assert_no_batch_twice(server)
    sent = set().union(*server.stats.batch_ids)
    assert batch_id_of(odd_id(10)) in sent and all(len(cid) <= 64 for cid in sent)
    assert not (tmp_path / "out.jsonl.batches.spool").exists()  # every batch collected: tidied
    data = orjson.loads(summary.read_bytes())
    # claude-haiku-4-5's Batch API price: $0.50 in, $2.50 out per million
    want = (data["prompt_tokens"] * 0.5 + data["completion_tokens"] * 2.5) / 1e6
    assert data["cost_usd"] == pytest.approx(want, rel=1e-3)
    assert KEY not in out.read_text() + result.stderr


def test_cache_reads_at_the_batch_cache_price(
    anthropic: Callable[..., AnthropicServer], claude: Callable[..., Result], tmp_path: Path
) -> None:
    """A batch answer's cache reads and writes are counted and priced at the batch's
    cache prices."""
    server = anthropic()
    rows = [{"id": f"c{i}", "text": "z " * 100 + '@fake {"cached": 40, "written": 10}'} for i in range(5)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    result = claude(
        inp, "-o", out, "--provider", "anthropic", "--base-url", server.base_url, "-m", "claude-haiku-4-5",
        "--prompt", "{text}", "--id-field", "id", "--batch-api", "--poll-every", "0.2", "--no-live",
        "--summary-json", summary,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    data = orjson.loads(summary.read_bytes())
    assert data["cached_tokens"] == 200 and data["cache_write_tokens"] == 50
    fresh = data["prompt_tokens"] - 250
    want = (fresh * 0.5 + 200 * 0.05 + 50 * 0.625 + data["completion_tokens"] * 2.5) / 1e6
    assert data["cost_usd"] == pytest.approx(want, rel=1e-3)


def test_no_wait_exits_4_then_a_rerun_collects(
    anthropic: Callable[..., AnthropicServer], claude: Callable[..., Result], files: Any, tmp_path: Path
) -> None:
    """--no-wait submits and exits 4 while the batch runs; the same command later
    collects it (exit 0) without creating another."""
    server = anthropic(batch_seconds=1.5)
    inp, schema = files(50)
    out = tmp_path / "out.jsonl"
    first = claude(*args(server, inp, schema, out, "--no-wait"))
    assert first.exit_code == 4, first.stderr
    assert (tmp_path / "out.jsonl.batches.spool").is_dir()  # kept while a batch runs
    time.sleep(1.6)
    second = claude(*args(server, inp, schema, out, "--no-wait"))
    assert second.exit_code == 0, second.stderr
    assert_each_once(out, 50)
    assert server.stats.batches_created == 1


def test_cancel_keeps_what_ended_and_leaves_the_rest(
    anthropic: Callable[..., AnthropicServer], claude: Callable[..., Result], files: Any, tmp_path: Path
) -> None:
    """--cancel cancels the running batch; a later run asks for its items afresh."""
    server = anthropic(batch_seconds=30)
    inp, schema = files(20)
    out = tmp_path / "out.jsonl"
    assert claude(*args(server, inp, schema, out, "--no-wait")).exit_code == 4
    cancelled = claude(*args(server, inp, schema, out, "--cancel"))
    assert cancelled.exit_code in (0, 1), cancelled.stderr
    assert next(iter(server.batches.values())).canceled
    server.batch_seconds = 0.2
    again = claude(*args(server, inp, schema, out))
    assert again.exit_code == 0, again.stderr
    assert_each_once(out, 20)


def test_then_live_finishes_errored_and_expired_items_live(
    anthropic: Callable[..., AnthropicServer], claude: Callable[..., Result], files: Any, tmp_path: Path
) -> None:
    """With --then live, what a batch errored or expired is asked live at once."""
    server = anthropic(errored_share=0.1, expired_share=0.1)
    inp, schema = files(200)
    out = tmp_path / "out.jsonl"
    result = claude(*args(server, inp, schema, out, "--then", "live"))
    assert result.exit_code == 0, result.stderr
    rows = assert_each_once(out, 200)
    via = Counter(r["llmbatch"]["via"] for r in rows.values())
    assert via["live"] > 0 and via["live"] == server.stats.answered
    assert server.stats.batches_created == 1


# --- killed at the moments that matter -------------------------------------------------


def spawn(tmp_path: Path, argv: list[object]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("ANTHROPIC_")}
    env.update(ANTHROPIC_API_KEY=KEY, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "llmbatch", "run", *map(str, argv)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(check: Callable[[], bool], proc: subprocess.Popen[bytes], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the moment never came"
        time.sleep(0.005)


MOMENTS: dict[str, tuple[dict[str, Any], Callable[[AnthropicServer], bool]]] = {
    "while the create is sent": ({"read_delay": 3.0}, lambda s: s.stats.creates_started >= 2),
    "right after a create": ({}, lambda s: s.stats.batches_created >= 2),
    "after a create whose answer was lost": (
        {"lose_create_answers": 2},
        lambda s: s.stats.batches_created >= 2,
    ),
    "while polling": ({"batch_seconds": 30.0}, lambda s: s.stats.retrieves >= 1),
    "while reading results": ({"results_delay": 5.0}, lambda s: s.stats.results_started >= 1),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigkill_then_a_run_to_the_end(
    anthropic: Callable[..., AnthropicServer], files: Any, tmp_path: Path, moment: str
) -> None:
    """SIGKILL at one of the moments, then the same command to the end: no batch
    created twice, each id once."""
    behaviour, moment_came = MOMENTS[moment]
    server = anthropic(**behaviour)
    inp, schema = files(300)
    out = tmp_path / "out.jsonl"
    argv = args(server, inp, schema, out, "--batch-requests", "100", "-q")
    proc = spawn(tmp_path, argv)
    try:
        wait_for(lambda: moment_came(server), proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        reap([proc])
    server.read_delay = server.results_delay = 0.0
    server.batch_seconds = 0.2
    for batch in server.batches.values():
        batch.ends = 0.0
    again = spawn(tmp_path, argv)
    try:
        _, stderr = again.communicate(timeout=120)
    finally:
        reap([again])
    assert again.returncode == 0, stderr.decode()
    assert_each_once(out, 300)
    assert server.stats.batches_created == 3, server.stats.batch_sizes
    assert_no_batch_twice(server)


async def test_an_uncertain_create_with_two_candidates_is_matched_by_custom_ids(tmp_path: Path) -> None:
    """Two batches of the same size made after a create's intent (another tool's, and
    ours whose answer was lost): both are waited on until they end, and ours is told by
    its custom_ids; nothing is created meanwhile."""
    from llmbatch.providers.anthropic import AnthropicProvider
    from llmbatch.providers.anthropic_batches import AnthropicBatches

    server = AnthropicServer(api_key=KEY, batch_seconds=0.5).start()
    provider = AnthropicProvider(api_key=KEY, base_url=server.base_url)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    try:
        ours = [odd_id(i) for i in range(3)]
        since = time.time() - 1  # the intent the record holds: three requests, a second ago
        batches = AnthropicBatches(
            provider,
            spool=tmp_path / "spool",
            intent=lambda _: (3, since),
            ids=lambda _: ours,
            known=lambda: ours,
        )
        ids: dict[str, str] = {}
        for who, cids in (
            ("theirs", [f"other{i}" for i in range(3)]),
            ("ours", [batch_id_of(odd_id(i)) for i in range(3)]),
        ):
            requests = [{"custom_id": cid, "params": body} for cid in cids]
            status, raw, _ = await provider.call(
                "POST", "/v1/messages/batches", data=orjson.dumps({"requests": requests})
            )
            assert status == 200
            ids[who] = orjson.loads(raw)["id"]
        found = await batches.find_batch({"llmbatch_run": "run1", "llmbatch_chunk": "1"})
        assert found is not None and found.id == ids["ours"]
        assert server.stats.batches_created == 2
    finally:
        await provider.aclose()
        server.stop()
