"""Re-asking: an unusable answer is sent again until --max-requests, over real loopback
HTTP; transport retries are counted apart and never use up the answers' budget."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import read_jsonl, write_jsonl

pytestmark = pytest.mark.usefixtures("no_backoff", "api_key")


def item(cid: str, script: dict[str, Any]) -> dict[str, Any]:
    text = f"Describe {cid} in JSON.\n@fake " + orjson.dumps(script).decode()
    return {"id": cid, "messages": [{"role": "user", "content": text}]}


def run(run_cli: Any, server: Any, tmp_path: Path, items: list[dict[str, Any]], *flags: str) -> Any:
    src = write_jsonl(tmp_path / "in.jsonl", items)
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    result = run_cli(
        "run", src, "-o", out, "--provider", "openai", "--base-url", server.base_url, "--model", "m",
        "--quiet", "--summary-json", summary, *flags,
    )  # fmt: skip
    return result, read_jsonl(out), orjson.loads(summary.read_bytes())


def test_bad_answers_are_asked_again_until_the_cap(run_cli, fake_server, tmp_path):
    """Items answering badly k times: valid with k+1 requests while k+1 <= 4; past the
    cap written once as invalid with 4 requests and the reason; the counts add up."""
    server = fake_server()
    items = [item(f"k{k}", {"bad": k}) for k in range(7)]
    result, rows, summary = run(run_cli, server, tmp_path, items, "--validate", "json", "--max-requests", "4")
    assert result.exit_code == 1, result.output
    assert Counter(r["custom_id"] for r in rows) == Counter(f"k{k}" for k in range(7))  # each once
    by_id = {r["custom_id"]: r for r in rows}
    for k in range(4):
        meta = by_id[f"k{k}"]["llmbatch"]
        assert meta["valid"] is True and meta["requests"] == k + 1, meta
    for k in range(4, 7):
        row = by_id[f"k{k}"]
        assert row["llmbatch"]["valid"] is False and row["llmbatch"]["requests"] == 4
        assert row["error"]["code"] == "invalid_answer"
        assert row["error"]["message"].startswith("answer is not JSON")
    assert summary["valid"] + summary["invalid"] + summary["failed"] == summary["done"] == 7
    assert summary["valid"] == 4 and summary["invalid"] == 3
    assert summary["reasks"] == sum(min(k, 3) for k in range(7))
    assert summary["requests"] == server.stats.requests == 7 + summary["reasks"]


def test_transport_retries_do_not_use_up_the_answers_budget(run_cli, fake_server, tmp_path):
    """Two 503s and then two bad answers: valid on the third answer, with the retries
    and the re-asks each counted in the output line and the summary."""
    server = fake_server()
    items = [item("mixed", {"fail": [503, 503], "bad": 2})]
    result, rows, summary = run(run_cli, server, tmp_path, items, "--validate", "json", "--max-requests", "3")
    assert result.exit_code == 0, result.output
    (row,) = rows
    assert row["llmbatch"]["valid"] is True
    assert row["llmbatch"]["requests"] == 3
    assert row["llmbatch"]["retries"] == 2
    assert summary["reasks"] == 2
    assert summary["retries"] == {"http_503": 2}


def test_a_validator_that_crashes_stops_the_run_before_any_request(run_cli, fake_server, tmp_path):
    """A python validator raising an unexpected error is caught by the preflight: exit 2,
    one clear line, and the server never saw a request."""
    server = fake_server()
    check = tmp_path / "check.py"
    check.write_text("def check(item, answer):\n    return len(answer) > 0 and undefined_name\n")
    src = write_jsonl(tmp_path / "in.jsonl", [item("a", {})])
    result = run_cli(
        "run", src, "-o", tmp_path / "out.jsonl", "--provider", "openai", "--base-url", server.base_url,
        "--model", "m", "--validate", f"python:{check}:check",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr and "check" in result.stderr
    assert "Traceback" not in result.output
    assert server.stats.requests == 0
