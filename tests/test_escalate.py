"""`--escalate MODEL` through the CLI against the loopback server with a per-model
quality knob: the items a cheap model cannot do are answered by the next one with a
fresh count, the output says which model answered, the summary prices each model at its
own price, a rerun with a changed list keeps valid answers and redoes invalid ones by
the new list, Batch API follow-ups escalate too, and --max-cost reserves at the
escalation model's price."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import by_id, read_jsonl, write_jsonl

from llmbatch.core.values import Request
from llmbatch.cost.prices import Price
from llmbatch.cost.spend import SpendingCap
from llmbatch.modes.batch.state import BatchState

pytestmark = pytest.mark.usefixtures("no_backoff", "api_key")

# USD per million tokens, from the config file: the strong model costs ten times more.
PRICES = "[prices.cheap]\ninput = 1.0\noutput = 2.0\n[prices.strong]\ninput = 10.0\noutput = 20.0\n"
USD = {"cheap": (1.0, 2.0), "strong": (10.0, 20.0), "middle": (5.0, 10.0)}


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "text": f"item number {i}"} for i in range(n)]


def run(
    run_cli: Callable[..., Any], server: Any, tmp_path: Path, n: int, *extra: object, fresh: bool = True
) -> tuple[Any, Path, dict[str, Any]]:
    """`llmbatch run` of `n` items asking for JSON on model cheap: (result, output, summary)."""
    src = tmp_path / "in.jsonl"
    if fresh or not src.exists():
        write_jsonl(src, rows(n))
    config = tmp_path / "llmbatch.toml"
    config.write_text(PRICES)
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    result = run_cli(
        "run", src, "-o", out, "--base-url", server.base_url, "-m", "cheap", "--prompt",
        "Answer in json: {text}", "--id-field", "id", "--validate", "json", "--no-live",
        "--config", config, "--summary-json", summary, *extra,
    )  # fmt: skip
    return result, out, orjson.loads(summary.read_bytes()) if summary.exists() else {}


def server_usd(server: Any, model: str) -> float:
    row = server.stats.by_model[model]
    price_in, price_out = USD[model]
    return (row["prompt_tokens"] * price_in + row["completion_tokens"] * price_out) / 1e6


def test_what_the_cheap_model_cannot_do_the_strong_one_answers(run_cli, fake_server, tmp_path):
    """30% invalid on cheap, 2% on strong, --max-requests 2: every item ends valid; the
    ones still invalid after two answers of cheap are answered by strong (about 9%), say
    so in `model` (before the tail the rerun reads) and count strong's answers afresh;
    the summary's items and cost per model match the server's usage per model."""
    server = fake_server(quality={"cheap": 0.3, "strong": 0.02})
    result, out, summary = run(run_cli, server, tmp_path, 300, "--max-requests", "2", "--escalate", "strong")
    assert result.exit_code == 0, result.output
    records = by_id(out)
    assert len(records) == 300
    assert all(r["llmbatch"]["valid"] for r in records.values())
    by_model = {m: [r for r in records.values() if r["llmbatch"]["model"] == m] for m in ("cheap", "strong")}
    escalated = len(by_model["strong"])
    assert 5 <= escalated <= 60, escalated  # 300 x 0.3^2 = 27 expected
    assert summary["escalated"] == escalated
    for r in by_model["strong"]:
        block = r["llmbatch"]
        assert 3 <= block["requests"] <= 4  # two of cheap, then one or two of strong
        assert r["response"]["body"]["model"] == "strong"
        assert list(block)[list(block).index("model") + 1 :] == ["via", "server", "fp", "state"]
    assert all(r["llmbatch"]["requests"] <= 2 for r in by_model["cheap"])
    models = summary["models"]
    assert models["cheap"]["items"] == 300 - escalated
    assert models["strong"]["items"] == escalated
    for model in ("cheap", "strong"):
        assert models[model]["answers"] == server.stats.by_model[model]["answers"]
        assert models[model]["cost_usd"] == pytest.approx(server_usd(server, model), rel=1e-9)
    assert summary["cost_usd"] == pytest.approx(server_usd(server, "cheap") + server_usd(server, "strong"))
    # the fingerprint is the first request's: a rerun finds every item done
    again, _, summary = run(run_cli, server, tmp_path, 300, "--escalate", "strong", fresh=False)
    assert again.exit_code == 0, again.output
    assert summary["skipped"] == 300 and summary["done"] == 0


def test_the_summary_lines_name_each_model(run_cli, fake_server, tmp_path):
    """The plain summary says how many were escalated and, per model, its items, answers
    and cost; merged rows carry llm_model."""
    server = fake_server(quality={"cheap": 1.0})
    flags = ("--escalate", "strong", "--max-requests", "1", "--merged")
    result, out, _ = run(run_cli, server, tmp_path, 10, *flags)
    assert result.exit_code == 0, result.output
    assert "escalated: 10" in result.output
    assert "by model: cheap 0 items (10 answers, $" in result.output
    assert "strong 10 items (10 answers, $" in result.output
    assert {r["llm_model"] for r in read_jsonl(out)} == {"strong"}


def test_a_rerun_with_a_changed_list_redoes_the_invalid_by_it(run_cli, fake_server, tmp_path):
    """A first run escalating to a model that never answers validly leaves those items
    invalid (exit 1); a rerun with --redo invalid and another list keeps every valid
    answer (of either model) and answers the rest on the new model."""
    server = fake_server(quality={"cheap": 0.5, "middle": 1.0, "strong": 0.0})
    first, out, summary = run(run_cli, server, tmp_path, 60, "--max-requests", "1", "--escalate", "middle")
    assert first.exit_code == 1, first.output
    invalid = {cid for cid, r in by_id(out).items() if not r["llmbatch"]["valid"]}
    assert invalid and all(by_id(out)[cid]["llmbatch"]["model"] == "middle" for cid in invalid)
    valid_before = {cid: r["response"]["body"]["id"] for cid, r in by_id(out).items() if cid not in invalid}
    again, out, summary = run(
        run_cli, server, tmp_path, 60, "--max-requests", "1", "--escalate", "strong", "--redo", "invalid",
        fresh=False,
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    records = by_id(out)
    assert all(r["llmbatch"]["valid"] for r in records.values())
    assert {cid: records[cid]["response"]["body"]["id"] for cid in valid_before} == valid_before
    assert summary["redone"] == {"invalid": len(invalid)}
    # redone from the first model: those cheap answers validly now stay on cheap
    assert {records[cid]["llmbatch"]["model"] for cid in invalid} <= {"cheap", "strong"}
    assert summary["models"]["strong"]["items"] == sum(
        records[cid]["llmbatch"]["model"] == "strong" for cid in invalid
    )


def test_batch_api_follow_ups_escalate(run_cli, fake_server, tmp_path):
    """With --batch-api, an item still invalid on cheap goes on in a follow-up batch on
    strong (a batch of strong's own), and is written valid by it."""
    server = fake_server(quality={"cheap": 1.0})
    result, out, summary = run(
        run_cli, server, tmp_path, 8, "--batch-api", "--poll-every", "0.05", "--max-requests", "1",
        "--escalate", "strong",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = by_id(out)
    assert {r["llmbatch"]["model"] for r in records.values()} == {"strong"}
    assert all(r["llmbatch"]["via"] == "batch" and r["llmbatch"]["valid"] for r in records.values())
    assert server.stats.by_way == {"batch": 16}
    assert server.stats.by_model["strong"]["answers"] == 8
    assert summary["models"]["strong"]["items"] == 8


def test_then_live_follow_ups_escalate(run_cli, fake_server, tmp_path):
    """--then live: the follow-ups of cheap's invalid answers are asked live on strong."""
    server = fake_server(quality={"cheap": 1.0})
    result, out, _ = run(
        run_cli, server, tmp_path, 6, "--batch-api", "--poll-every", "0.05", "--max-requests", "1",
        "--escalate", "strong", "--then", "live",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = by_id(out)
    assert {(r["llmbatch"]["model"], r["llmbatch"]["via"]) for r in records.values()} == {("strong", "live")}
    assert server.stats.by_way == {"batch": 6, "live": 6}


def test_an_older_batch_record_gains_the_rung_column(tmp_path):
    """A batch record written before --escalate (no `rung` column) opens, and its items
    read as on the first model."""
    path = tmp_path / "out.jsonl.batches.db"
    BatchState(path).close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE items DROP COLUMN rung")
    db.commit()
    db.close()
    state = BatchState(path)
    columns = {row[1] for row in state._db.execute("PRAGMA table_info(items)")}
    state.close()
    assert "rung" in columns


def test_max_cost_reserves_an_escalated_attempt_at_its_models_price():
    """The cap prices a request to the escalation model at that model's price, and
    refuses to start when that price is unknown."""
    strong = Price(10.0, 20.0)
    price = Price(1.0, 2.0, escalation=(("strong", strong),))
    cap = SpendingCap(1.0, price)
    body = {"messages": [{"role": "user", "content": "x" * 1000}], "max_tokens": 100}
    cheap_req = Request("a", {**body, "model": "cheap"})
    strong_req = Request("a", {**body, "model": "strong"})
    assert cap.worst_case(strong_req) == pytest.approx(10 * cap.worst_case(cheap_req))
    with pytest.raises(Exception, match="--escalate nameless"):
        SpendingCap(1.0, Price(1.0, 2.0, escalation=(("nameless", None),)))


def test_max_cost_without_the_escalation_models_price_is_exit_2(run_cli, fake_server, tmp_path):
    """--max-cost with an --escalate model of no known price: exit 2, nothing sent."""
    server = fake_server()
    result, _, _ = run(
        run_cli, server, tmp_path, 3, "--escalate", "unpriced-model", "--max-cost", "1", "--max-tokens", "50"
    )
    assert result.exit_code == 2, result.output
    assert "--escalate unpriced-model" in result.output
    assert server.stats.by_way == {}


def test_identical_requests_under_cache_name_the_model_that_answered(run_cli, fake_server, tmp_path):
    """With --cache, identical requests wait for the first one's answer: when it was the
    escalation model's, their lines name that model too, and only one was asked."""
    server = fake_server(quality={"cheap": 1.0})
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": "the same"} for i in range(5)])
    config = tmp_path / "llmbatch.toml"
    config.write_text(PRICES)
    out = tmp_path / "out.jsonl"
    result = run_cli(
        "run", src, "-o", out, "--base-url", server.base_url, "-m", "cheap", "--prompt",
        "Answer in json: {text}", "--id-field", "id", "--validate", "json", "--no-live", "--config", config,
        "--escalate", "strong", "--max-requests", "1", "--cache", tmp_path / "cache.db",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = by_id(out)
    assert {r["llmbatch"]["model"] for r in records.values()} == {"strong"}
    assert server.stats.by_model["strong"]["answers"] == 1
