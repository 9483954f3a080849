"""Refusals and truncations through the CLI against the loopback server: a refusal is
written invalid with the cause refused and not asked again (unless --reask-refusals),
live and with --batch-api; a cut answer carries the cause truncated; merged rows say
both in llm_cause; a rerun reads lines with and without a cause."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import by_id, read_jsonl, write_jsonl

from llmbatch.core.values import Cause, Completion, State
from llmbatch.output.readback import line_of, read_tail

pytestmark = pytest.mark.usefixtures("no_backoff", "api_key")

REFUSAL = "I can't help with that"
POLL = ("--poll-every", "0.05")


def rows(n: int, *, refuse_every: int = 20, script: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Data items answering a small JSON object; every `refuse_every`-th refuses."""
    out = []
    for i in range(n):
        spec: dict[str, Any] = {"answer": {"n": i}, **(script or {})}
        if refuse_every and i % refuse_every == 0:
            spec["refuse"] = REFUSAL
        out.append({"id": f"r{i}", "text": f"item r{i}.\n@fake " + orjson.dumps(spec).decode()})
    return out


REFUSED = {f"r{i}" for i in range(0, 100, 20)}


def run(
    run_cli: Any, server: Any, tmp_path: Path, items: list[dict[str, Any]], *extra: object, out: str = "out"
) -> Any:
    src = write_jsonl(tmp_path / "in.jsonl", items)
    out_path = tmp_path / f"{out}.jsonl"
    summary = tmp_path / "summary.json"
    result = run_cli(
        "run", src, "-o", out_path, "--base-url", server.base_url, "--prompt", "{text}", "--id-field", "id",
        "-m", "gpt-4o-mini", "--validate", "json", "--no-live", "--summary-json", summary, *extra,
    )  # fmt: skip
    return result, out_path, orjson.loads(summary.read_bytes()) if summary.exists() else None


def asked(server: Any) -> Counter[str]:
    """How often each item was sent live, by the id in its prompt."""
    counts: Counter[str] = Counter()
    for body in server.bodies:
        text = body["messages"][-1]["content"]
        counts[text.split(".", 1)[0].removeprefix("item ")] += 1
    return counts


def test_five_percent_refusals_are_counted_refused_asked_once_and_exit_1(run_cli, fake_server, tmp_path):
    """100 items, 5 of which the model refuses: each refused item is asked once, written
    invalid with the cause refused and the refusal as its reason; the summary counts 5
    refused; exit 1."""
    server = fake_server()
    result, out, summary = run(run_cli, server, tmp_path, rows(100))
    assert result.exit_code == 1, result.output
    assert server.stats.requests == 100 and set(asked(server).values()) == {1}
    records = by_id(out)
    assert len(records) == 100
    for cid in REFUSED:
        meta, error = records[cid]["llmbatch"], records[cid]["error"]
        assert (meta["state"], meta["cause"], meta["requests"]) == ("invalid", "refused", 1)
        assert error == {"code": "invalid_answer", "message": f"the model refused: {REFUSAL}"}
    assert all("cause" not in r["llmbatch"] for cid, r in records.items() if cid not in REFUSED)
    assert (summary["valid"], summary["invalid"], summary["refused"], summary["reasks"]) == (95, 5, 5, 0)
    assert "refused / truncated: 5 / 0" in result.stderr


def test_with_reask_refusals_a_refusal_is_asked_again_up_to_max_requests(run_cli, fake_server, tmp_path):
    """--reask-refusals --max-requests 3: the items that always refuse are asked three
    times and written refused; one that refuses once is valid on its second answer."""
    server = fake_server()
    items = rows(100)
    items[1] = rows(2, refuse_every=1, script={"refusals": 1})[1]
    result, out, summary = run(run_cli, server, tmp_path, items, "--reask-refusals", "--max-requests", "3")
    assert result.exit_code == 1, result.output
    counts = asked(server)
    assert {cid: counts[cid] for cid in REFUSED} == dict.fromkeys(REFUSED, 3)
    assert counts["r1"] == 2 and server.stats.requests == 94 + 5 * 3 + 2
    records = by_id(out)
    assert all(records[cid]["llmbatch"]["cause"] == "refused" for cid in REFUSED)
    assert records["r1"]["llmbatch"]["state"] == "valid" and "cause" not in records["r1"]["llmbatch"]
    assert (summary["refused"], summary["reasks"], summary["invalid"]) == (5, 5 * 2 + 1, 5)


def test_batch_api_refusals_get_no_follow_up(run_cli, fake_server, tmp_path):
    """--batch-api: the refused items are written from the batch, refused, and no
    follow-up batch is made for them; exit 1. With --reask-refusals they go on into
    follow-up batches until --max-requests."""
    server = fake_server()
    result, out, summary = run(run_cli, server, tmp_path, rows(100), "--batch-api", *POLL)
    assert result.exit_code == 1, result.output
    assert server.stats.creates == 1
    assert set(server.stats.answers.values()) == {1}
    records = by_id(out)
    assert {cid for cid, r in records.items() if r["llmbatch"].get("cause") == "refused"} == REFUSED
    assert all(records[cid]["llmbatch"]["via"] == "batch" for cid in REFUSED)
    assert (summary["refused"], summary["invalid"]) == (5, 5)

    again = fake_server()
    result, out, summary = run(
        run_cli, again, tmp_path, rows(100), "--batch-api", *POLL, "--reask-refusals",
        "--max-requests", "2", "--fresh",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert again.stats.creates == 2  # the batch, and one follow-up for its refusals
    assert {cid: again.stats.answers[cid] for cid in REFUSED} == dict.fromkeys(REFUSED, 2)
    assert summary["refused"] == 5


def test_a_truncated_answer_has_the_cause_truncated(run_cli, fake_server, tmp_path):
    """An answer cut at --max-tokens is judged by the validators as any: valid with the
    cause truncated when it passes; with --require-finish stop it is invalid (asked
    again up to the cap, written with the cause truncated)."""
    server = fake_server()
    items = rows(3, refuse_every=0)
    items[2]["text"] = "item r2.\n@fake " + orjson.dumps({"answer": "a long answer " * 20}).decode()
    result, out, summary = run(run_cli, server, tmp_path, items, "--max-tokens", "8")
    records = by_id(out)  # r0 and r1 fit in 8 tokens; r2 is cut, and its cut text is not JSON
    assert (records["r2"]["llmbatch"]["state"], records["r2"]["llmbatch"]["cause"]) == (
        "invalid",
        "truncated",
    )
    assert records["r2"]["error"]["message"].startswith("answer is not JSON")
    assert all("cause" not in records[cid]["llmbatch"] for cid in ("r0", "r1"))
    assert summary["truncated"] == 1 and summary["refused"] == 0 and result.exit_code == 1

    server = fake_server()
    result, out, summary = run(
        run_cli, server, tmp_path, items, "--max-tokens", "8", "--require-finish", "stop",
        "--validate", "regex:.", "--max-requests", "2", "--fresh",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    row = by_id(out)["r2"]
    assert (row["llmbatch"]["state"], row["llmbatch"]["cause"], row["llmbatch"]["requests"]) == (
        "invalid",
        "truncated",
        2,
    )
    assert "finish_reason was 'length'" in row["error"]["message"]


def test_a_valid_truncated_answer_is_valid_with_the_cause(run_cli, fake_server, tmp_path):
    """Without --require-finish, a cut answer that passes the validators is valid, and
    still says it was truncated; the run exits 0."""
    server = fake_server()
    items = [
        {"id": "t", "text": "item t.\n@fake " + orjson.dumps({"answer": "a long answer " * 20}).decode()}
    ]
    src = write_jsonl(tmp_path / "in.jsonl", items)
    out = tmp_path / "out.jsonl"
    result = run_cli(
        "run", src, "-o", out, "--base-url", server.base_url, "--prompt", "{text}", "--id-field", "id",
        "-m", "gpt-4o-mini", "--validate", "regex:long", "--max-tokens", "8", "--no-live",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = by_id(out)["t"]["llmbatch"]
    assert (meta["state"], meta["cause"]) == ("valid", "truncated")


def test_merged_rows_carry_llm_cause(run_cli, fake_server, tmp_path):
    """--merged: a refused row has llm_cause refused (and no answer), a cut one
    truncated, the others null."""
    server = fake_server()
    items = rows(3, refuse_every=2)  # r0 and r2 refuse
    items[1]["text"] = "item r1.\n@fake " + orjson.dumps({"answer": "a long answer " * 20}).decode()
    result, out, _ = run(run_cli, server, tmp_path, items, "--merged", "--max-tokens", "8")
    assert result.exit_code == 1, result.output
    merged = {r["llm_custom_id"]: r for r in read_jsonl(out)}
    assert {cid: r["llm_cause"] for cid, r in merged.items()} == {
        "r0": "refused",
        "r1": "truncated",
        "r2": "refused",
    }
    assert merged["r0"]["llm_state"] == "invalid" and merged["r0"]["llm_answer"] is None
    assert merged["r0"]["llm_error"] == f"the model refused: {REFUSAL}"
    report = orjson.loads(run_cli("report", out, "--json").stdout)
    assert (report["invalid"], report["refused"], report["truncated"]) == (3, 2, 1)
    _, batch_shaped, _ = run(run_cli, fake_server(), tmp_path, items, "--max-tokens", "8", out="batch")
    shown = run_cli("report", batch_shaped).stdout
    assert "refused: 2   truncated: 1" in shown


def test_a_rerun_keeps_refused_lines_and_redoes_them_with_redo_invalid(run_cli, fake_server, tmp_path):
    """A refused line is an invalid one to a rerun: kept by a plain rerun (exit 1,
    nothing sent), redone by --redo invalid. A line an older llmbatch wrote without
    a cause reads the same."""
    server = fake_server()
    result, out, _ = run(run_cli, server, tmp_path, rows(40))
    assert result.exit_code == 1
    raw = out.read_bytes().splitlines()
    refused = [r for r in raw if b'"cause":"refused"' in r]
    assert len(refused) == 2
    for line in refused:  # the fast tail read and the parse agree on a line with a cause
        assert read_tail(line) == line_of(line) and read_tail(line).state is State.INVALID
    # An older llmbatch's lines: no cause at all.
    out.write_bytes(b"".join(r.replace(b'"cause":"refused",', b"") + b"\n" for r in raw))
    assert b"cause" not in out.read_bytes()

    kept_server = fake_server()
    result, out, summary = run(run_cli, kept_server, tmp_path, rows(40))
    assert result.exit_code == 1, result.output
    assert kept_server.stats.requests == 0 and summary["kept"] == {"invalid": 2}

    redo_server = fake_server()
    result, out, summary = run(run_cli, redo_server, tmp_path, rows(40), "--redo", "invalid")
    assert result.exit_code == 1, result.output
    assert redo_server.stats.requests == 2 and summary["redone"] == {"invalid": 2}
    records = by_id(out)
    assert len(records) == 40
    assert {cid for cid, r in records.items() if r["llmbatch"].get("cause") == "refused"} == {"r0", "r20"}


def _chat(message: Any, finish: str = "stop") -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }


@pytest.mark.parametrize(
    ("body", "refusal", "truncated", "cause"),
    [
        (_chat({"content": "ok", "refusal": None}), None, False, None),
        (_chat({"content": "ok"}, "length"), None, True, Cause.TRUNCATED),
        (_chat({"content": None, "refusal": "No."}), "No.", False, Cause.REFUSED),
        (_chat({"content": "Sorry.", "refusal": "No."}, "length"), "No.", True, Cause.REFUSED),
        (_chat({"content": [{"type": "refusal", "refusal": "No."}]}), "No.", False, Cause.REFUSED),
        (_chat({"content": [{"type": "text", "text": "ok"}]}, "length"), None, True, Cause.TRUNCATED),
        (_chat({"content": None, "tool_calls": []}, "tool_calls"), None, False, None),
        ({"object": "list", "data": [{"embedding": [0.1]}]}, None, False, None),
        ({"choices": []}, None, False, None),
        ({"choices": ["odd"]}, None, False, None),
        ("<html>not JSON</html>", None, False, None),
    ],
    ids=lambda v: None,
)
def test_an_answer_is_read_for_its_refusal_and_its_truncation(body, refusal, truncated, cause):
    """`refusal`, `truncated` and the judge's `cause` agree on every shape of answer,
    odd ones included (never an exception)."""
    completion = Completion(body=body)
    assert (completion.refusal, completion.truncated, completion.cause) == (refusal, truncated, cause)
