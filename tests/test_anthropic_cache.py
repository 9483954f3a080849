"""--provider anthropic and the prompt cache: cache_control breakpoints on --system and the
template's fixed prefix, through the CLI against the fake Anthropic server's cache."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import Result

from llmbatch.core.cachekey import sends_key, with_breakpoints
from llmbatch.testing.anthropic import AnthropicServer
from llmbatch.testing.anthropic_cache import AnthropicPromptCache
from tests.conftest import by_id, write_jsonl

KEY = "sk-ant-test-LEAKCHECK-5e0c41aa"
SYSTEM = "You are a careful reviewer of product reviews. " * 20  # about 240 tokens
PREFIX = "Read the guidelines below, then rate the review.\n" + "Guideline: be fair and brief. " * 200
TEMPLATE = PREFIX + "Review: {text}"


@pytest.fixture
def server() -> Iterator[AnthropicServer]:
    with AnthropicServer(api_key=KEY, prompt_cache=AnthropicPromptCache()) as running:
        yield running


@pytest.fixture
def claude(
    run_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., Result]:
    """`claude(server, out, *args)`: the templated run of 240 reviews against `server`."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    rows = [{"id": f"r{i}", "text": f"review {i}: it works and I like it"} for i in range(240)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)

    def invoke(server: AnthropicServer, out: Path, *args: object) -> Result:
        return run_cli(
            "run", inp, "-o", out, "--prompt", TEMPLATE, "--system", SYSTEM, "--id-field", "id",
            "--provider", "anthropic", "--base-url", server.base_url, "--no-live", "-m", "claude-haiku-4-5",
            "--max-tokens", "50", *args,
        )  # fmt: skip

    return invoke


def _marks(body: dict[str, Any]) -> int:
    return orjson.dumps(body).count(b'"cache_control"')


def test_the_fixed_prefix_is_read_from_the_cache_after_the_first_request(
    server: AnthropicServer, claude: Callable[..., Result], run_cli: Callable[..., Result], tmp_path: Path
) -> None:
    """240 templated items, a 1,500-token fixed prefix and --system, --prompt-cache-key auto:
    each request marks the system and the prefix; after the first, at least 90% of the
    prefix tokens are read from the cache, and the cost is the server's usage at the
    cache read and write prices."""
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    result = claude(server, out, "--prompt-cache-key", "auto", "--summary-json", summary)
    assert result.exit_code == 0, result.stderr
    bodies = server.stats.bodies
    assert len(bodies) == 240 and all(_marks(b) == 2 for b in bodies)
    assert bodies[0]["messages"][0]["content"][0]["text"] == PREFIX + "Review: "
    usages = server.stats.usages
    written = max(u["cache_creation_input_tokens"] for u in usages)
    assert written > 1500  # the system and the prefix: above Anthropic's 1,024-token floor
    read = sum(u["cache_read_input_tokens"] for u in usages)
    assert read >= 0.9 * written * (len(usages) - 1)
    data = orjson.loads(summary.read_bytes())
    # claude-haiku-4-5: $1 in, $5 out, $0.10 cache read, $1.25 cache write per million
    want = sum(
        u["input_tokens"] * 1.0
        + u["cache_read_input_tokens"] * 0.1
        + u["cache_creation_input_tokens"] * 1.25
        + u["output_tokens"] * 5.0
        for u in usages
    )
    assert data["cost_usd"] == pytest.approx(want / 1e6, rel=1e-6)
    assert data["cached_tokens"] == read
    # `llmbatch report` prices the written output the same way, cache writes included.
    shown = orjson.loads(run_cli("report", out, "--json").stdout)
    assert shown["cost_usd"] == pytest.approx(want / 1e6, rel=1e-5)
    writes = sum(u["cache_creation_input_tokens"] for u in usages)
    assert data["cache_saved_usd"] == pytest.approx((read * 0.9 - writes * 0.25) / 1e6, rel=1e-6)


def test_off_sends_no_breakpoints_and_the_answers_are_the_same(
    server: AnthropicServer, claude: Callable[..., Result], tmp_path: Path
) -> None:
    """--prompt-cache-key off, and the default to a server that is not Anthropic's own API,
    send no cache_control; the answers, ids and fingerprints are those of a cached run, so
    a rerun with the cache turned on has nothing to do."""
    cached, off, default = tmp_path / "cached.jsonl", tmp_path / "off.jsonl", tmp_path / "default.jsonl"
    assert claude(server, cached, "--prompt-cache-key", "auto").exit_code == 0
    server.stats.bodies.clear()
    assert claude(server, off, "--prompt-cache-key", "off").exit_code == 0
    assert claude(server, default).exit_code == 0
    assert len(server.stats.bodies) == 480 and not any(_marks(b) for b in server.stats.bodies)
    a, b, c = by_id(cached), by_id(off), by_id(default)
    assert a.keys() == b.keys() == c.keys() and len(a) == 240

    def answers(rows: dict[str, Any]) -> dict[str, Any]:
        return {k: (r["response"]["body"]["content"], r["llmbatch"]["fp"]) for k, r in rows.items()}

    assert answers(a) == answers(b) == answers(c)
    sent = len(server.stats.bodies)
    again = claude(server, off, "--prompt-cache-key", "auto")
    assert again.exit_code == 0 and len(server.stats.bodies) == sent


def test_message_batches_carry_the_breakpoints_and_read_the_cache(
    claude: Callable[..., Result], tmp_path: Path
) -> None:
    """--batch-api: the batch's requests carry the same breakpoints, one answer writes the
    prefix and every other reads it, priced at the batch's cache prices."""
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    with AnthropicServer(api_key=KEY, prompt_cache=AnthropicPromptCache(), batch_seconds=0.2) as server:
        result = claude(
            server, out, "--prompt-cache-key", "auto", "--batch-api", "--poll-every", "0.2",
            "--summary-json", summary,
        )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    usages = [r["llmbatch"]["usage"] for r in by_id(out).values()]
    assert len(usages) == 240
    assert sum(1 for u in usages if u.get("cache_write_tokens")) == 1
    assert sum(1 for u in usages if u.get("cached_tokens")) == 239
    data = orjson.loads(summary.read_bytes())
    fresh = data["prompt_tokens"] - data["cached_tokens"] - data["cache_write_tokens"]
    # the batch price: half of $1 in, $5 out, $0.10 cache read, $1.25 cache write per million
    want = fresh * 0.5 + data["cached_tokens"] * 0.05 + data["cache_write_tokens"] * 0.625
    want += data["completion_tokens"] * 2.5
    assert data["cost_usd"] == pytest.approx(want / 1e6, rel=1e-6)


def test_a_body_marking_its_own_breakpoints_is_left_alone() -> None:
    """A body with a cache_control of its own keeps it and gets none added; a short fixed
    prefix stays inside the user message while the system is still marked."""
    own = {"system": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
           "messages": [{"role": "user", "content": PREFIX + "x"}]}  # fmt: skip
    before = orjson.dumps(own)
    with_breakpoints(own, PREFIX)
    assert orjson.dumps(own) == before
    short = {"system": "S", "messages": [{"role": "user", "content": "Rate: x"}]}
    with_breakpoints(short, "Rate: ")
    assert short["messages"][0]["content"] == "Rate: x" and _marks(short) == 1


def test_the_default_sends_breakpoints_to_anthropics_own_api_only() -> None:
    """The default mode marks requests to api.anthropic.com, not to other servers."""
    host = "api.anthropic.com"
    assert sends_key("openai", "https://api.anthropic.com", host)
    assert not sends_key("openai", "http://127.0.0.1:8901", host)
    assert sends_key("auto", "http://127.0.0.1:8901", host)
    assert not sends_key("off", "https://api.anthropic.com", host)
