"""The budget a server offers is spent: a full bucket goes out at once, then the refill
rate; a gateway's header names teach the limit; a server enforcing a shorter window than
it announces is met with smooth pacing after one lesson. Through the CLI, over loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import write_jsonl


def rows(n: int) -> list[dict[str, Any]]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    return [{"custom_id": f"r-{i}", "body": body} for i in range(n)]


def run(run_cli: Any, tmp_path: Path, server: Any, n: int, *args: str) -> dict[str, Any]:
    src = write_jsonl(tmp_path / "in.jsonl", rows(n))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    out.unlink(missing_ok=True)
    result = run_cli(
        "run", src, "-o", out, "--provider", "openai", "--base-url", server.base_url,
        "--no-live", "--summary-json", summary, *args, env={"OPENAI_API_KEY": "sk-test"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    info: dict[str, Any] = orjson.loads(summary.read_bytes())
    info["stderr"] = result.stderr
    assert len(out.read_bytes().splitlines()) == n
    return info


@pytest.mark.parametrize("told", [False, True], ids=["untold", "told --rpm 240"])
def test_a_full_bucket_is_spent_at_once_then_the_refill_rate(fake_server, run_cli, tmp_path, told):
    """240/min in a bucket that starts full, 300 requests: 240 at once, 60 at 4/s, about
    15 s (within 1.3x), told the limit or not, with at most 2% 429s."""
    server = fake_server(rpm=240, bucket_seconds=60)
    info = run(run_cli, tmp_path, server, 300, *(["--rpm", "240"] if told else []))
    assert info["elapsed_s"] <= 1.3 * 15, info
    assert server.stats.rate_limited <= 6, info


def test_a_gateways_key_limit_is_learned_from_its_headers(fake_server, run_cli, tmp_path):
    """A LiteLLM-style key limit (x-ratelimit-api_key-* names, no reset header, a fixed
    window, retry-after the whole window), 150 requests untold at 60 a window of 3 s:
    the limit is learned from the first answers, each window's budget goes at once,
    about one 429 a window (the one that finds it spent): within 1.2x of the fixed
    windows' minimum (6 s), at most 2% 429s."""
    server = fake_server(key_rpm=60, key_window=3)
    info = run(run_cli, tmp_path, server, 150, "--concurrency", "16")
    assert info["elapsed_s"] <= 1.2 * 6 + 0.5, info
    assert server.stats.rate_limited <= 3, info


def test_a_429_in_a_burst_the_headers_allowed_turns_the_pacing_smooth(fake_server, run_cli, tmp_path):
    """A server announcing 6,000/min with a minute's budget left but enforcing 100/s:
    the first burst's 429s teach the shorter window once (said once on stderr), and the
    run paces smoothly after: 800 requests within 1.15x of N/R (8 s), at most 2% 429s."""
    server = fake_server(rpm=6000, bucket_seconds=60, enforce_seconds=1)
    info = run(run_cli, tmp_path, server, 800, "--concurrency", "16")
    assert info["elapsed_s"] <= 1.15 * 8, info
    assert server.stats.rate_limited <= 16, info
    assert info["stderr"].count("refused a burst its headers allowed") == 1, info["stderr"]
