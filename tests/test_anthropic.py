"""--provider anthropic, live: the Messages API through the CLI against the fake Anthropic
server (llmbatch.testing.anthropic) on loopback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import Result

from llmbatch.core.http import reset_seconds
from llmbatch.testing.anthropic import AnthropicServer
from llmbatch.testing.reviews import REVIEW_SCHEMA as SCHEMA
from tests.conftest import ANTHROPIC_KEY as KEY
from tests.conftest import by_id, write_jsonl


@pytest.fixture
def claude(
    run_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., Result]:
    """`claude(server, *args)`: `llmbatch run ... --provider anthropic` against `server`."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)

    def invoke(server: AnthropicServer, *args: object) -> Result:
        return run_cli(
            "run", *args, "--provider", "anthropic", "--base-url", server.base_url, "--no-live", "-m",
            "claude-haiku-4-5",
        )  # fmt: skip

    return invoke


def reviews(tmp_path: Path, n: int, script: str = "") -> Path:
    rows = [{"id": f"r{i}", "text": f"review {i}: it works and I like it {script}"} for i in range(n)]
    return write_jsonl(tmp_path / "in.jsonl", rows)


def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "review.schema.json"
    path.write_bytes(orjson.dumps(SCHEMA))
    return path


def test_templated_items_with_a_schema_follow_limits_announced_only_in_headers(
    anthropic: Callable[..., AnthropicServer], claude: Callable[..., Result], tmp_path: Path
) -> None:
    """600 templated items with a schema, the fake enforcing requests and input tokens per
    minute told only by its anthropic-ratelimit-* headers: every id once, valid, the
    tool_use answer checked, at most 1% 429s after the first --concurrency requests."""
    server = anthropic(rpm=12000, itpm=120000, bucket_seconds=2)
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    inp = reviews(tmp_path, 600)
    result = claude(
        server, inp, "-o", out, "--prompt", "Rate: {text}", "--id-field", "id", "--schema",
        schema_file(tmp_path), "--system", "Be terse.", "-c", "16", "--summary-json", summary,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = by_id(out)
    assert sorted(rows) == sorted(f"r{i}" for i in range(600))
    for row in rows.values():
        assert row["llmbatch"]["state"] == "valid"
        assert row["response"]["body"]["content"][0]["type"] == "tool_use"
    assert server.stats.http_429 <= 16 + 6, server.stats.http_429
    first = server.stats.bodies[0]
    assert first["system"] == "Be terse."
    assert first["max_tokens"] == 1024  # the default, named in --help
    assert first["tool_choice"] == {"type": "tool", "name": "review"}
    assert first["tools"][0]["input_schema"] == SCHEMA
    assert server.stats.api_keys == {KEY} and server.stats.versions == {"2023-06-01"}
    assert KEY not in out.read_text() + result.stderr
    data = orjson.loads(summary.read_bytes())
    assert data["cost_usd"] is not None and data["cost_usd"] > 0


def test_a_529_storm_costs_no_item_and_does_not_lower_the_pace(
    anthropic: Callable[..., AnthropicServer], claude: Callable[..., Result], tmp_path: Path, no_backoff: None
) -> None:
    """30% of requests overloaded (529) for the first second: every item ends valid, the
    529s are retried, and the pace is never cut (no 429 was among them)."""
    server = anthropic(rpm=3000, bucket_seconds=1, overload_share=0.3, overload_seconds=1.0)
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    result = claude(
        server, reviews(tmp_path, 200), "-o", out, "--prompt", "{text}", "--id-field", "id", "-c", "8",
        "--summary-json", summary,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert len(by_id(out)) == 200
    assert server.stats.http_529 > 5
    data = orjson.loads(summary.read_bytes())
    assert data["pace_cuts"] == 0
    assert sum(data["retries"].values()) >= server.stats.http_529


def test_a_reask_sends_the_tool_use_back_with_a_tool_result(
    anthropic: Callable[..., AnthropicServer], claude: Callable[..., Result], tmp_path: Path
) -> None:
    """An invalid first answer is asked again with the answer and a tool_result block
    holding the validator's message; the second answer is valid."""
    server = anthropic()
    inp = write_jsonl(
        tmp_path / "in.jsonl", [{"id": "a", "text": 'x @fake {"answer": {"sentiment": "meh"}, "bad": 0}'}]
    )
    out = tmp_path / "out.jsonl"
    result = claude(
        server, inp, "-o", out, "--prompt", "{text}", "--id-field", "id", "--schema", schema_file(tmp_path)
    )
    # the scripted answer never fits: every re-ask carries the conversation further
    assert result.exit_code == 1, result.stderr
    row = by_id(out)["a"]
    assert row["llmbatch"]["requests"] == 4 and row["llmbatch"]["state"] == "invalid"
    second = server.stats.bodies[1]["messages"]
    assert second[1]["role"] == "assistant" and second[1]["content"][0]["type"] == "tool_use"
    block = second[2]["content"][0]
    assert block["type"] == "tool_result" and block["tool_use_id"] == second[1]["content"][0]["id"]
    assert block["is_error"] is True and "not valid" in block["content"]


def test_stop_reasons_and_cache_tokens(
    anthropic: Callable[..., AnthropicServer], claude: Callable[..., Result], tmp_path: Path
) -> None:
    """max_tokens is a truncation, refusal a refusal; cache reads and writes are counted
    in the usage and priced at their own prices."""
    server = anthropic()
    rows = [
        {"id": "cut", "text": "tell me a long story about a lighthouse keeper and the sea " * 3},
        {"id": "no", "text": 'x @fake {"refuse": "I cannot help with that."}'},
        {"id": "cache", "text": "y " * 200 + '@fake {"cached": 60, "written": 20}'},
    ]
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    result = claude(
        server, write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, "--prompt", "{text}", "--id-field", "id",
        "--max-tokens", "5", "--summary-json", summary,
    )  # fmt: skip
    assert result.exit_code == 1, result.stderr
    got = by_id(out)
    assert got["cut"]["llmbatch"]["cause"] == "truncated"
    assert got["no"]["llmbatch"]["cause"] == "refused" and got["no"]["llmbatch"]["state"] == "invalid"
    usage = got["cache"]["llmbatch"]["usage"]
    assert usage["cached_tokens"] == 60 and usage["cache_write_tokens"] == 20
    data = orjson.loads(summary.read_bytes())
    assert data["cache_write_tokens"] == 20 and data["cached_tokens"] == 60
    # claude-haiku-4-5: $1 in, $5 out, $0.10 cache read, $1.25 cache write per million
    fresh = data["prompt_tokens"] - 60 - 20
    want = (fresh * 1.0 + 60 * 0.1 + 20 * 1.25 + data["completion_tokens"] * 5.0) / 1e6
    assert data["cost_usd"] == pytest.approx(want, rel=1e-3)


def test_batch_lines_and_bare_bodies_go_to_the_messages_api(
    anthropic: Callable[..., AnthropicServer], claude: Callable[..., Result], tmp_path: Path
) -> None:
    """A Batch-shaped line for /v1/messages and a bare Messages body are sent as they are,
    with max_tokens filled where they have none; a chat line is refused for that item."""
    server = anthropic()
    rows = [
        {"custom_id": "line", "method": "POST", "url": "/v1/messages",
         "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}},
        {"messages": [{"role": "user", "content": "hello"}], "system": "S", "metadata": {"id": "bare"}},
        {"custom_id": "chat", "url": "/v1/chat/completions",
         "body": {"messages": [{"role": "user", "content": "x"}]}},
    ]  # fmt: skip
    out = tmp_path / "out.jsonl"
    result = claude(server, write_jsonl(tmp_path / "in.jsonl", rows), "-o", out)
    assert result.exit_code == 1, result.stderr
    got = by_id(out)
    assert got["line"]["llmbatch"]["state"] == "valid" and got["bare"]["llmbatch"]["state"] == "valid"
    assert got["chat"]["llmbatch"]["state"] == "failed"
    sent = {b["messages"][0]["content"]: b for b in server.stats.bodies}
    assert sent["hi"]["max_tokens"] == 50 and sent["hello"]["max_tokens"] == 1024
    assert sent["hello"]["system"] == "S" and "metadata" not in sent["hello"]


def test_the_offline_fake_answers_messages_bodies(run_cli: Callable[..., Result], tmp_path: Path) -> None:
    """--provider fake answers a Messages request in Anthropic's shape."""
    out = tmp_path / "out.jsonl"
    result = run_cli(
        "run", reviews(tmp_path, 3), "-o", out, "--provider", "fake", "--endpoint", "/v1/messages",
        "--prompt", "{text}", "--id-field", "id", "--schema", schema_file(tmp_path), "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    for row in by_id(out).values():
        assert row["response"]["body"]["type"] == "message"
        assert set(orjson.loads(orjson.dumps(row["response"]["body"]["content"][0]["input"]))) == {
            "sentiment",
            "score",
        }


def test_no_key_says_which_variable(
    run_cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ANTHROPIC_API_KEY, the error names it (exit 2)."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    result = run_cli(
        "run",
        reviews(tmp_path, 1),
        "-o",
        tmp_path / "o.jsonl",
        "--provider",
        "anthropic",
        "--prompt",
        "{text}",
        "-m",
        "claude-haiku-4-5",
    )
    assert result.exit_code == 2
    assert "ANTHROPIC_API_KEY" in result.stderr


def test_an_rfc3339_reset_is_read_as_seconds_from_now() -> None:
    """Anthropic's reset is a time, OpenAI's a duration: both are seconds to wait."""
    import datetime as dt

    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    assert 28 <= (reset_seconds(soon) or 0) <= 30
    assert reset_seconds("2000-01-01T00:00:00Z") == 0
    assert reset_seconds("6m0s") == 360
    assert reset_seconds("soon") is None


def test_estimate_knows_the_messages_ceiling(run_cli: Callable[..., Result], tmp_path: Path) -> None:
    """estimate counts each Messages request's answer at most at its max_tokens: 1024
    unless given."""
    inp = reviews(tmp_path, 10)
    base = (
        "estimate",
        inp,
        "--provider",
        "anthropic",
        "--prompt",
        "{text}",
        "-m",
        "claude-haiku-4-5",
        "--json",
    )
    data = orjson.loads(run_cli(*base).stdout)
    assert data["answer_tokens_max"] == 10 * 1024
    data = orjson.loads(run_cli(*base, "--max-tokens", "100").stdout)
    assert data["answer_tokens_max"] == 10 * 100


def test_max_cost_reserves_a_batch_at_the_batch_price(
    anthropic: Callable[..., AnthropicServer], claude: Callable[..., Result], tmp_path: Path
) -> None:
    """--batch-api --max-cost: a batch whose worst case (max_tokens each, at the batch
    price) does not fit is never created (exit 3); one that fits is."""
    server = anthropic(batch_seconds=0.1)
    inp = reviews(tmp_path, 100)
    out = tmp_path / "out.jsonl"
    common = (
        "--prompt",
        "{text}",
        "--id-field",
        "id",
        "--batch-api",
        "--poll-every",
        "0.1",
        "--max-tokens",
        "100",
    )
    # worst case: 100 x 100 output tokens at $2.50 a million = $0.025, plus the prompts
    refused = claude(server, inp, "-o", out, *common, "--max-cost", "0.02")
    assert refused.exit_code == 3, refused.stderr
    assert server.stats.batches_created == 0
    done = claude(server, inp, "-o", out, *common, "--max-cost", "0.05")
    assert done.exit_code == 0, done.stderr
    assert server.stats.batches_created == 1 and len(by_id(out)) == 100


def test_a_merged_row_carries_cache_writes(
    anthropic: Callable[..., AnthropicServer], claude: Callable[..., Result], tmp_path: Path
) -> None:
    """--merged rows say the prompt tokens written to the cache beside those read."""
    server = anthropic()
    rows = [{"id": "m", "text": "w " * 100 + '@fake {"cached": 30, "written": 12}'}]
    out = tmp_path / "out.jsonl"
    result = claude(
        server,
        write_jsonl(tmp_path / "in.jsonl", rows),
        "-o",
        out,
        "--prompt",
        "{text}",
        "--id-field",
        "id",
        "--merged",
    )
    assert result.exit_code == 0, result.stderr
    row = orjson.loads(out.read_bytes().splitlines()[0])
    assert row["llm_cached_tokens"] == 30 and row["llm_cache_write_tokens"] == 12


def test_an_output_token_limit_is_learned_apart_from_the_input_one(
    anthropic: Callable[..., AnthropicServer], claude: Callable[..., Result], tmp_path: Path
) -> None:
    """A server limiting output tokens (and no input tokens), told only in its
    anthropic-ratelimit-output-tokens-* headers: every item done, few 429s beyond the
    first burst's (the server shares this process: its timing is loose)."""
    server = anthropic(otpm=24_000, bucket_seconds=1)
    out = tmp_path / "out.jsonl"
    result = claude(
        server, reviews(tmp_path, 300), "-o", out, "--prompt", "Rate: {text}", "--id-field", "id", "--schema",
        schema_file(tmp_path), "-c", "16",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert len(by_id(out)) == 300
    assert server.stats.http_429 <= 16 + 30, server.stats.http_429


def test_the_schema_note_is_openais_and_strict_is_refused(
    anthropic: Callable[..., AnthropicServer], claude: Callable[..., Result], tmp_path: Path
) -> None:
    """With --provider anthropic no note about OpenAI's strict subset is printed, and
    --strict (OpenAI's flag) is exit 2 saying what --schema does here."""
    server = anthropic()
    inp, out = reviews(tmp_path, 2), tmp_path / "out.jsonl"
    ran = claude(
        server, inp, "-o", out, "--prompt", "{text}", "--id-field", "id", "--schema", schema_file(tmp_path)
    )
    assert ran.exit_code == 0 and "strict" not in ran.stderr
    refused = claude(
        server, inp, "-o", out, "--prompt", "{text}", "--schema", schema_file(tmp_path), "--strict"
    )
    assert refused.exit_code == 2 and "forced tool" in refused.stderr


def test_the_response_cache_answers_a_repeated_messages_run(
    anthropic: Callable[..., AnthropicServer], claude: Callable[..., Result], tmp_path: Path
) -> None:
    """--cache: a fresh run of the same Messages requests is answered from the cache,
    with the same valid lines and nothing sent."""
    server = anthropic()
    inp, out, cache = reviews(tmp_path, 5), tmp_path / "out.jsonl", tmp_path / "cache.db"
    common = ("--prompt", "{text}", "--id-field", "id", "--schema", schema_file(tmp_path), "--cache", cache)
    assert claude(server, inp, "-o", out, *common).exit_code == 0
    sent = server.stats.requests
    again = claude(server, inp, "-o", out, *common, "--fresh")
    assert again.exit_code == 0, again.stderr
    assert server.stats.requests == sent
    rows = by_id(out)
    assert len(rows) == 5 and all(r["llmbatch"]["via"] == "cached" for r in rows.values())


def test_an_output_token_budget_is_shared_through_redis(
    anthropic: Callable[..., AnthropicServer],
    claude: Callable[..., Result],
    tmp_path: Path,
    redis_server: Any,
) -> None:
    """--redis with Anthropic's output-token limit: its budget is a shared one too."""
    server = anthropic(otpm=60_000, bucket_seconds=1)
    out = tmp_path / "out.jsonl"
    result = claude(
        server, reviews(tmp_path, 50), "-o", out, "--prompt", "{text}", "--id-field", "id",
        "--redis", redis_server.url, "--output-tpm", "60000",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert len(by_id(out)) == 50


async def test_the_library_executor_speaks_messages_with_an_anthropic_provider() -> None:
    """ParallelLLMExecutor with an AnthropicProvider: the system message goes in `system`,
    max_tokens is filled, and the answer's text comes back."""
    from llmbatch import LLMMessage, LLMTask, ParallelLLMExecutor
    from llmbatch.providers.anthropic import AnthropicProvider

    server = AnthropicServer(api_key=KEY).start()
    provider = AnthropicProvider(api_key=KEY, base_url=server.base_url)
    try:
        executor = ParallelLLMExecutor(provider, max_concurrency=4, model="claude-haiku-4-5")
        tasks = {
            "q1": LLMTask(
                messages=[
                    LLMMessage("system", "Be terse."),
                    LLMMessage("user", 'hi @fake {"answer": "hello"}'),
                ]
            )
        }
        results = await executor.execute(tasks)
    finally:
        await provider.aclose()
        server.stop()
    assert results["q1"].success and results["q1"].value.content == "hello"
    sent = server.stats.bodies[0]
    assert sent["system"] == "Be terse." and sent["max_tokens"] == 1024
    assert [m["role"] for m in sent["messages"]] == ["user"]
