"""Service tiers through the CLI against the loopback server: flex's capacity 429s are
retried without lowering the pace and counted apart, `--flex-fallback N` sends the
unlucky items on the default tier, the cost is the tier's, flex is a live tier, a cap
without the tier's price is refused, and the tier leaves the fingerprint alone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import read_jsonl, write_jsonl

from llmbatch.core.errors import CapacityError, RateLimited
from llmbatch.core.http import error_for_status
from llmbatch.cost.prices import Price, price_for
from llmbatch.input.build import fingerprint

pytestmark = pytest.mark.usefixtures("no_backoff", "api_key")

FLEX_MODEL = "gpt-5-mini"  # genai-prices has its flex price: $0.125 in / $1 out
NO_PRIORITY_MODEL = "gpt-5-nano"  # flex priced, priority not


def items(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"r{i}", "messages": [{"role": "user", "content": f"Say hello to r{i}."}]} for i in range(n)
    ]


def run(
    run_cli: Callable[..., Any], server: Any, tmp_path: Path, rows: list[dict[str, Any]], *flags: object
) -> tuple[Any, dict[str, dict[str, Any]], dict[str, Any]]:
    """`llmbatch run` of `rows` against `server`: (result, output rows by id, summary)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    result = run_cli(
        "run", src, "-o", out, "--base-url", server.base_url, "-m", FLEX_MODEL, "--quiet",
        "--summary-json", summary, *flags,
    )  # fmt: skip
    written = read_jsonl(out) if out.exists() else []
    return (
        result,
        {r["custom_id"]: r for r in written},
        orjson.loads(summary.read_bytes()) if summary.exists() else {},
    )


def test_flex_capacity_429s_are_retried_at_the_same_pace_and_priced_at_flex(run_cli, fake_server, tmp_path):
    """20% capacity 429s: every item written, no cut of the pace, the requests per minute
    within 5% of a run whose retries are not 429s, the retries counted as capacity 429s,
    and the cost at the flex price. The same share of rate-limit 429s does cut the pace."""
    rows = items(200)
    flags = ("--rpm", "3000", "--service-tier", "flex")  # 50/s: a few seconds a run

    # Both runs must find what a first run imports (the openai SDK, the price database:
    # a second in all) imported already.
    run(run_cli, fake_server(), tmp_path / "warm", rows[:1], *flags)
    # About as many retries, of 500s (which never lower the pace), for the reference rate.
    errors = fake_server(fault_rate=0.2, faults=(500,))
    _, _, reference = run(run_cli, errors, tmp_path / "errors", rows, *flags)
    assert reference["pace_cuts"] == 0

    flex = fake_server(flex_capacity_429=0.2)
    result, out, summary = run(run_cli, flex, tmp_path / "flex", rows, *flags)
    assert result.exit_code == 0, result.output
    assert len(out) == 200 and all(r["llmbatch"]["valid"] for r in out.values())
    assert all(r["response"]["body"]["service_tier"] == "flex" for r in out.values())
    assert summary["capacity_429"] == flex.stats.faults["capacity_429"] > 20
    assert summary["retries"] == {"capacity": summary["capacity_429"]}
    assert summary["http_429"] == 0 and summary["pace_cuts"] == 0
    assert "capacity 429s" in result.stderr

    price = summary["price"]
    assert (price["input_per_mtok"], price["output_per_mtok"]) == (0.125, 1.0)
    fresh = summary["prompt_tokens"] - summary["cached_tokens"]
    expected = (fresh * 0.125 + summary["cached_tokens"] * 0.0125 + summary["completion_tokens"] * 1.0) / 1e6
    assert summary["cost_usd"] == pytest.approx(expected)

    rates = (summary["requests_per_min"], reference["requests_per_min"])
    assert rates[0] == pytest.approx(rates[1], rel=0.05), (rates, summary["requests"], reference["requests"])

    # Rate-limit 429s at the same share are a limit: the pace is cut.
    limited = fake_server(fault_rate=0.2, faults=(429,))
    _, _, cut = run(run_cli, limited, tmp_path / "limited", rows[:100], *flags)
    assert cut["pace_cuts"] > 0 and cut["capacity_429"] == 0


def test_flex_fallback_sends_the_unlucky_items_on_the_default_tier(run_cli, fake_server, tmp_path):
    """--flex-fallback 2: an item refused twice for capacity is asked next on the default
    tier (the server receives it so), the answer says the default tier served it, the
    summary counts the fallbacks, and its cost is each answer's at its tier's price."""
    server = fake_server(flex_capacity_429=0.5)
    result, out, summary = run(
        run_cli, server, tmp_path, items(60), "--service-tier", "flex", "--flex-fallback", "2",
        "--max-cost", "1", "--max-tokens", "50",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tiers: dict[str, list[str]] = {}
    for body in server.bodies:
        cid = body["messages"][0]["content"].removeprefix("Say hello to ").rstrip(".")
        tiers.setdefault(cid, []).append(body["service_tier"])
    fell_back = {cid for cid, seen in tiers.items() if "default" in seen}
    assert fell_back, "with half the flex requests refused, some items fall back"
    for cid, seen in tiers.items():
        if cid in fell_back:
            assert seen == ["flex", "flex", "default"], (cid, seen)
            assert out[cid]["response"]["body"]["service_tier"] == "default"
        else:
            assert seen.count("flex") <= 2 and seen[-1] == "flex"
            assert out[cid]["response"]["body"]["service_tier"] == "flex"
        assert out[cid]["llmbatch"]["valid"] is True
    assert summary["fallbacks"] == len(fell_back)
    assert summary["pace_cuts"] == 0

    # Each answer costs its tier's price: flex's, or the default tier's for those fallen back.
    prices = {"flex": (0.125, 1.0), "default": (0.25, 2.0)}
    expected = 0.0
    for row in out.values():
        usage = row["response"]["body"]["usage"]
        rate_in, rate_out = prices[row["response"]["body"]["service_tier"]]
        assert not usage.get("prompt_tokens_details", {}).get("cached_tokens")
        expected += (usage["prompt_tokens"] * rate_in + usage["completion_tokens"] * rate_out) / 1e6
    assert summary["cost_usd"] == pytest.approx(expected)


def test_capacity_429s_count_against_max_retries(run_cli, fake_server, tmp_path):
    """Every flex request refused for capacity: each item fails after --max-retries, with
    the capacity error, and nothing lowers the pace."""
    server = fake_server(flex_capacity_429=1.0)
    result, out, summary = run(
        run_cli, server, tmp_path, items(5), "--service-tier", "flex", "--max-retries", "2"
    )
    assert result.exit_code == 1
    assert len(server.bodies) == 5 * 3
    assert {r["error"]["code"] for r in out.values()} == {"capacity"}
    assert summary["capacity_429"] == 15 and summary["pace_cuts"] == 0


def test_flex_with_the_batch_api_is_exit_2(run_cli, fake_server, tmp_path):
    """Flex is a live tier: --service-tier flex, or a body's own, with --batch-api is a
    usage error, and nothing is sent."""
    server = fake_server()
    result, _, _ = run(run_cli, server, tmp_path / "flag", items(3), "--service-tier", "flex", "--batch-api")
    assert result.exit_code == 2 and "live tier" in result.stderr
    own = [{**row, "service_tier": "flex"} for row in items(3)]
    result, _, _ = run(run_cli, server, tmp_path / "body", own, "--batch-api")
    assert result.exit_code == 2 and "live tier" in result.stderr
    assert server.bodies == []


def test_priority_without_a_price_under_max_cost_is_exit_2(run_cli, fake_server, tmp_path):
    """The price database has no priority price for the model: the cap could not be
    honoured, so nothing is sent (exit 2), the message naming the tier."""
    server = fake_server()
    result, _, _ = run(
        run_cli, server, tmp_path, items(3), "-m", NO_PRIORITY_MODEL, "--service-tier", "priority",
        "--max-cost", "1", "--max-tokens", "10",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "priority tier" in result.stderr
    assert server.bodies == []


def test_the_tier_is_not_part_of_the_fingerprint(run_cli, fake_server, tmp_path):
    """An output written without a service tier (as llmbatch wrote it before tiers) is not
    stale when rerun with --service-tier flex: every line is kept, nothing is sent."""
    server = fake_server()
    rows = items(10)
    first, _, _ = run(run_cli, server, tmp_path, rows)
    assert first.exit_code == 0
    sent = len(server.bodies)
    again, out, summary = run(run_cli, server, tmp_path, rows, "--service-tier", "flex")
    assert again.exit_code == 0, again.output
    assert len(server.bodies) == sent and summary["skipped"] == 10 and len(out) == 10


def test_fingerprints_without_a_tier_are_those_of_before():
    """A body without service_tier hashes as llmbatch hashed it before tiers (the value
    pinned from that version), and the tier does not change a body's fingerprint."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    url = "/v1/chat/completions"
    assert fingerprint(url, body) == 1625978996335625543
    assert fingerprint(url, {**body, "service_tier": "flex"}) == fingerprint(url, body)


def test_a_capacity_429_is_its_own_error():
    """OpenAI's flex "Resource Unavailable" 429 (by its code, or its message alone) is a
    CapacityError, not a RateLimited; other 429s stay rate limits."""
    headers = {"retry-after-ms": "50"}
    by_code = b'{"error": {"message": "no capacity", "type": "x", "code": "resource_unavailable"}}'
    by_text = b'{"error": {"message": "Resource Unavailable: try again later", "code": null}}'
    plain = b'{"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}'
    for body in (by_code, by_text):
        err = error_for_status(429, body, headers)
        assert isinstance(err, CapacityError) and not isinstance(err, RateLimited)
        assert err.code == "capacity" and err.retry_after == pytest.approx(0.05)
    assert type(error_for_status(429, plain, headers)) is RateLimited


def test_the_test_servers_capacity_429_has_openais_shape(fake_server):
    """The loopback server's capacity 429 is an OpenAI error body with the code."""
    server = fake_server(flex_capacity_429=1.0)
    import urllib.error
    import urllib.request

    data = orjson.dumps(
        {"model": "m", "service_tier": "flex", "messages": [{"role": "user", "content": "x"}]}
    )
    req = urllib.request.Request(server.base_url + "/chat/completions", data=data, method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=5)
    assert caught.value.code == 429
    error = orjson.loads(caught.value.read())["error"]
    assert error["code"] == "resource_unavailable" and error["message"].startswith("Resource unavailable")
    assert Counter(server.stats.faults) == Counter({"capacity_429": 1})


# --- prices by tier ----------------------------------------------------------------


def _sides(price: Price | None) -> tuple[float, float, float | None] | None:
    return None if price is None else (price.input, price.output, price.cached_input)


def test_a_tier_the_database_prices_has_that_price() -> None:
    """gpt-5-mini's flex and priority prices are the database's own; default and auto
    are the list price."""
    assert _sides(price_for(FLEX_MODEL, tier="flex")) == (0.125, 1.0, 0.0125)
    assert _sides(price_for(FLEX_MODEL, tier="priority")) == (0.45, 3.6, 0.045)
    listed = _sides(price_for(FLEX_MODEL))
    assert listed == (0.25, 2.0, 0.025)
    assert (
        _sides(price_for(FLEX_MODEL, tier="default")) == listed == _sides(price_for(FLEX_MODEL, tier="auto"))
    )
    source = price_for(FLEX_MODEL, tier="flex")
    assert source is not None and "flex price" in source.source


def test_flex_without_a_flex_price_is_the_batch_price_for_openai_models() -> None:
    """gpt-4o-mini has no flex price in the database: flex costs its Batch API price."""
    flex = price_for("gpt-4o-mini", tier="flex")
    assert _sides(flex) == _sides(price_for("gpt-4o-mini", batch=True))
    assert flex is not None and (flex.input, flex.output) == (0.075, 0.3)
    assert "Batch API" in flex.source


def test_priority_without_a_priority_price_is_unknown() -> None:
    """No priority price in the database: unknown, never the list price."""
    assert price_for(NO_PRIORITY_MODEL, tier="priority") is None
    assert price_for(NO_PRIORITY_MODEL, tier="flex") is not None


def test_the_config_files_price_is_halved_for_flex_and_flags_are_taken_as_given() -> None:
    """A table price is the list price: flex halves it, priority has none from it (the
    database's then, if any); --price-in/--price-out are the user's word on any tier."""
    table = {"my-model": Price(2.0, 8.0)}
    assert _sides(price_for("my-model", table, tier="flex")) == (1.0, 4.0, None)
    assert price_for("my-model", table, tier="priority") is None
    assert _sides(price_for("my-model", table)) == (2.0, 8.0, None)
    given = price_for("my-model", table, price_in=3.0, price_out=9.0, tier="priority")
    assert _sides(given) == (3.0, 9.0, None)


def test_the_cap_reserves_and_charges_a_fallen_back_request_at_the_default_price() -> None:
    """A flex run's price carries the default tier's: a request sent there after its
    capacity 429s is reserved and charged at it, the others at flex's."""
    from llmbatch.core.tiers import on_tier
    from llmbatch.core.values import Request, Usage
    from llmbatch.cost.spend import SpendingCap

    price = Price(1.0, 4.0, fallback=Price(2.0, 8.0))
    body = {
        "model": "m",
        "service_tier": "flex",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "x"}],
    }
    flex = Request("a", body)
    default = on_tier(flex, "default")
    cap = SpendingCap(1.0, price, tier="flex")
    assert cap.worst_case(default) == pytest.approx(2 * cap.worst_case(flex))
    cap.settle(0.0, Usage(1000, 1000), flex)
    cap.settle(0.0, Usage(1000, 1000), default)
    assert cap.spent == pytest.approx((1000 * 1.0 + 1000 * 4.0 + 1000 * 2.0 + 1000 * 8.0) / 1e6)


def test_flex_waits_fifteen_minutes_for_an_answer_unless_told(run_cli) -> None:
    """With --service-tier flex the timeout is 900 s (OpenAI's advice), unless --timeout
    says otherwise; --help says so; an unknown tier is a usage error."""
    from llmbatch.app.settings import DEFAULT_TIMEOUT, make_settings

    base = {"input": Path("in"), "output": Path("out")}
    assert make_settings(flags={**base, "service_tier": "flex"}, config={}).timeout == 900.0
    assert make_settings(flags={**base, "service_tier": "flex", "timeout": 30.0}, config={}).timeout == 30.0
    assert make_settings(flags={**base, "service_tier": "flex"}, config={"timeout": 60}).timeout == 60.0
    assert make_settings(flags={**base, "service_tier": "priority"}, config={}).timeout == DEFAULT_TIMEOUT
    help_text = run_cli("run", "--help", env={"COLUMNS": "200"}).output
    assert "--service-tier" in help_text and "900 with --service-tier flex" in help_text
    assert run_cli("run", "in.jsonl", "-o", "o.jsonl", "--service-tier", "cheap").exit_code == 2
