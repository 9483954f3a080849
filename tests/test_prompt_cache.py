"""The prompt cache key through the CLI against the loopback server's prompt cache:
templated requests carry one key made from the template's fixed prefix and the system
message (to OpenAI's API by default, to any server with auto, never with off; a body's
own key kept), the cached tokens are priced at the cached price and shown as a saving,
the key leaves the fingerprint alone, and a bounded look-ahead brings interleaved keys
together without changing an --ordered output."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import by_id, read_jsonl, write_jsonl

from llmbatch.core.cachekey import fixed_prefix, prompt_cache_key, sends_key
from llmbatch.core.errors import InputError
from llmbatch.core.values import Request
from llmbatch.cost.prices import cost, price_for
from llmbatch.modes.live.lookahead import grouped
from llmbatch.testing.promptcache import PromptCache

pytestmark = pytest.mark.usefixtures("no_backoff", "api_key")

MODEL = "gpt-4o-mini"  # genai-prices has its cached-input price
PREFIX_TOKENS = 1500
# A fixed part of about 1,500 fake tokens (four characters each), then the item's text.
TEMPLATE = ("Read the guide below, then classify the review.\n" + "guide line. " * 496)[: PREFIX_TOKENS * 4]
TEMPLATE += "\nReview: {text}"


def run(
    run_cli: Callable[..., Any], server: Any, tmp_path: Path, src: Path, *extra: object
) -> tuple[Any, Path, dict[str, Any]]:
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    result = run_cli(
        "run", src, "-o", out, "--base-url", server.base_url, "-m", MODEL, "--no-live",
        "--summary-json", summary, *extra,
    )  # fmt: skip
    return result, out, orjson.loads(summary.read_bytes()) if summary.exists() else {}


def items(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": f"review {i}"} for i in range(n)])


def server_usd(server: Any) -> float:
    row = server.stats.by_model[MODEL]
    spent = cost(price_for(MODEL), row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"])
    assert spent is not None
    return spent


def test_a_templates_requests_share_one_key_and_its_cache(run_cli, fake_server, tmp_path):
    """300 items of a template with a 1,500-token fixed prefix, --prompt-cache-key auto:
    every request carries the same key; after the first request the cached tokens are
    at least 90% of the prefix's; the cost is the server's usage at cached prices; the
    summary shows the saving."""
    server = fake_server(prompt_cache=PromptCache())
    template = tmp_path / "t.txt"
    template.write_text(TEMPLATE)
    result, out, summary = run(
        run_cli, server, tmp_path, items(tmp_path, 300), "--template", template, "--id-field", "id",
        "--prompt-cache-key", "auto", "--system", "You classify reviews.",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    keys = {b.get("prompt_cache_key") for b in server.bodies}
    assert keys == {prompt_cache_key(TEMPLATE, "You classify reviews.")}
    cached = sorted(r["llmbatch"]["usage"].get("cached_tokens", 0) for r in by_id(out).values())
    assert cached[0] == 0 and cached[1] >= 0.9 * PREFIX_TOKENS, cached[:3]
    assert summary["cached_tokens"] == server.stats.by_model[MODEL]["cached_tokens"]
    assert summary["cached_tokens"] >= 0.9 * PREFIX_TOKENS * 299
    assert summary["cost_usd"] == pytest.approx(server_usd(server), rel=0.05)
    price = price_for(MODEL)
    assert price is not None and price.cached_input is not None
    saved = summary["cached_tokens"] * (price.input - price.cached_input) / 1e6
    assert summary["cache_saved_usd"] == pytest.approx(saved)
    assert "prompt cache: saved $" in result.output


def test_the_key_goes_to_openai_by_default_to_others_with_auto_never_with_off(run_cli, fake_server, tmp_path):
    """Without the flag a loopback server gets no key (only OpenAI's API does); off sends
    none; a body's own key is kept under auto; the key leaves the fingerprint alone (a
    rerun with it finds every item done)."""
    assert sends_key("openai", "https://api.openai.com/v1")
    assert not sends_key("openai", "http://127.0.0.1:8000/v1")
    assert not sends_key("off", "https://api.openai.com/v1")
    server = fake_server()
    src = items(tmp_path, 5)
    result, _, _ = run(run_cli, server, tmp_path, src, "--prompt", "Fixed part. {text}", "--id-field", "id")
    assert result.exit_code == 0, result.output
    assert all("prompt_cache_key" not in b for b in server.bodies)
    sent = len(server.bodies)
    result, _, summary = run(
        run_cli, server, tmp_path, src, "--prompt", "Fixed part. {text}", "--id-field", "id",
        "--prompt-cache-key", "auto",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert summary["skipped"] == 5 and len(server.bodies) == sent
    (tmp_path / "out.jsonl").unlink()
    result, _, _ = run(
        run_cli, server, tmp_path, src, "--prompt", "Fixed part. {text}", "--id-field", "id",
        "--prompt-cache-key", "on", "--param", 'prompt_cache_key="mine"',
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {b["prompt_cache_key"] for b in server.bodies[sent:]} == {"mine"}


def test_a_template_starting_with_a_placeholder_and_no_system_has_no_key():
    """Nothing is shared, so nothing routes: no key. Braces written twice are text."""
    assert prompt_cache_key("{text} is the review", None) is None
    assert fixed_prefix("Rate {{this}} review: {text}") == "Rate {this} review: "
    assert prompt_cache_key("{text}", "Be brief.") is not None


def interleaved(n: int, keys: int) -> list[Request]:
    return [Request(f"r{i}", {"prompt_cache_key": f"k{i % keys}"}) for i in range(n)]


def test_the_look_ahead_groups_keys_within_its_bound():
    """Interleaved keys come out a key at a time within the look-ahead; every item once;
    no item moved later by more than twice the look-ahead's size; a reject is handed on at once;
    one key only passes straight through."""
    reqs = interleaved(400, 4)
    out = list(grouped(reqs, size=100))
    assert sorted(r.custom_id for r in out) == sorted(r.custom_id for r in reqs)
    switches = sum(a.body != b.body for a, b in pairwise(out))
    assert switches < 40  # 399 switches as read
    place = {r.custom_id: i for i, r in enumerate(out)}
    assert all(place[r.custom_id] - i <= 2 * 100 for i, r in enumerate(reqs))
    bad = InputError("bad", line=3)
    mixed: list[Request | InputError] = [*interleaved(3, 2), bad, *interleaved(3, 2)]
    assert bad in list(grouped(mixed, size=100))[:4]
    single = interleaved(50, 1)
    assert list(grouped(single)) == single


def test_bodies_carrying_their_own_keys_meet_a_warm_cache(run_cli, fake_server, tmp_path):
    """Bare bodies of 8 system prompts of ~1,200 tokens, interleaved, against a cache
    that holds about two prompts' prefixes: the look-ahead sends each key's together, so
    most prefix tokens are served cached; with --prompt-cache-key off (no look-ahead)
    few are. --ordered still writes the output in input order."""
    rows = [
        {
            "id": f"q{i}",
            "prompt_cache_key": f"k{i % 8}",
            "messages": [
                {"role": "system", "content": f"system prompt {i % 8}. " * 280},
                {"role": "user", "content": f"question {i}"},
            ],
        }
        for i in range(240)
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    shares = {}
    for mode in ("auto", "off"):
        server = fake_server(prompt_cache=PromptCache(machines=1, capacity=8))
        result, out, summary = run(
            run_cli, server, tmp_path, src, "--prompt-cache-key", mode, "--ordered", "--fresh", "-c", "4"
        )
        assert result.exit_code == 0, result.output
        shares[mode] = summary["cached_tokens"] / summary["prompt_tokens"]
        if mode == "auto":
            assert [r["custom_id"] for r in read_jsonl(out)] == [f"q{i}" for i in range(240)]
    assert shares["auto"] > 0.8 > 0.3 > shares["off"], shares
