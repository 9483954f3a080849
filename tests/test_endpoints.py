"""The Responses API, completions and moderations beside chat, through the CLI against
the loopback server: Batch API lines with a text.format schema, live and with
--batch-api, re-asked with the validator's message inside `input`; the same items as
data rows with --endpoint; completions and moderations on the same rows; the flags that
mean nothing for an endpoint refused before anything is sent."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import by_id, read_jsonl, write_jsonl

from llmbatch.core.endpoints import ENDPOINTS, RESPONSES, text_format_of
from llmbatch.core.structured import response_format
from llmbatch.cost.prices import cost, price_for
from llmbatch.providers.script import BAD_ANSWER

pytestmark = pytest.mark.usefixtures("no_backoff", "api_key")

N = 500
POLL = ("--poll-every", "0.05")
SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"enum": ["good", "bad", "unsure"]},
        "stars": {"type": "integer", "minimum": 1},
    },
    "required": ["verdict", "stars"],
}
TEMPLATE = "Judge item {id}: {text}\n{note}"
CACHED, REASONING = 8, 4


def items(n: int = N) -> list[dict[str, Any]]:
    """Data rows; one in ten answers badly once; every answer reports cached and
    reasoning tokens; one in five speaks of violence (for moderations)."""
    out = []
    for i in range(n):
        script = {"cached": CACHED, "reasoning": REASONING, **({"bad": 1} if i % 10 == 0 else {})}
        text = "they attack the castle" if i % 5 == 0 else "a quiet garden"
        out.append({"id": f"r{i}", "text": text, "note": "@fake " + orjson.dumps(script).decode()})
    return out


def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "verdict.schema.json"
    path.write_bytes(orjson.dumps(SCHEMA))
    return path


def batch_lines(rows: list[dict[str, Any]], schema: Path) -> list[dict[str, Any]]:
    """The rows as Responses API Batch lines, asking for the schema in text.format."""
    fmt = text_format_of(response_format(orjson.loads(schema.read_bytes()), "verdict", strict=False))
    return [
        {
            "custom_id": row["id"],
            "method": "POST",
            "url": RESPONSES,
            "body": {"model": "gpt-4o-mini", "input": TEMPLATE.format(**row), "text": {"format": fmt}},
        }
        for row in rows
    ]


def uploaded_bodies(server: Any) -> list[dict[str, Any]]:
    """The bodies of every Batch API line uploaded to the server."""
    return [
        orjson.loads(raw)["body"]
        for stored in server.files.files.values()
        if stored.purpose == "batch"
        for raw in stored.content.splitlines()
        if raw.strip()
    ]


def answers_of(path: Path) -> dict[str, str | None]:
    endpoint = ENDPOINTS[RESPONSES]
    return {cid: endpoint.text(rec["response"]["body"]) for cid, rec in by_id(path).items()}


@pytest.mark.parametrize("mode", ["live", "batch"])
def test_responses_batch_lines_with_a_schema_live_and_through_the_batch_api(
    run_cli, fake_server, tmp_path, mode
):
    """500 Responses API lines asking for a schema in text.format: every id written
    once, valid; the 50 answered badly once are re-asked with the answer and the
    validator's message appended to `input`; the cached and reasoning tokens are in the
    output, the summary and the cost, live and through the Batch API alike."""
    server = fake_server()
    schema = schema_file(tmp_path)
    rows = items()
    src = write_jsonl(tmp_path / "in.jsonl", batch_lines(rows, schema))
    out, summary_file = tmp_path / "out.jsonl", tmp_path / "summary.json"
    extra = ["--batch-api", "--no-live", *POLL] if mode == "batch" else ["--no-live"]
    result = run_cli(
        "run", src, "-o", out, "--base-url", server.base_url, "--validate", f"schema:{schema}",
        "--summary-json", summary_file, *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = read_jsonl(out)
    assert Counter(r["custom_id"] for r in lines) == Counter(r["id"] for r in rows)  # each once
    records = by_id(out)
    assert all(r["llmbatch"]["valid"] for r in records.values())
    for cid, rec in records.items():
        answer = orjson.loads(ENDPOINTS[RESPONSES].text(rec["response"]["body"]) or "")
        assert answer["verdict"] in ("good", "bad", "unsure") and answer["stars"] >= 1
        asked = 2 if int(cid[1:]) % 10 == 0 else 1
        assert rec["llmbatch"]["requests"] == asked, rec["llmbatch"]
        assert rec["llmbatch"]["usage"]["cached_tokens"] == CACHED * asked
        assert rec["llmbatch"]["usage"]["reasoning_tokens"] == REASONING * asked

    sent = server.bodies if mode == "live" else uploaded_bodies(server)
    reasks = [b for b in sent if isinstance(b.get("input"), list)]
    assert len(reasks) == N // 10
    for body in reasks:
        first, answered, told = body["input"]
        assert first["role"] == "user" and first["content"].startswith("Judge item r")
        assert answered == {"role": "assistant", "content": BAD_ANSWER}
        assert told["role"] == "user" and told["content"].startswith(
            "That answer is not valid: answer is not JSON"
        )
        assert body["text"]["format"]["schema"] == SCHEMA  # the rest of the request as it was

    summary = orjson.loads(summary_file.read_bytes())
    answers = N + N // 10
    assert summary["reasks"] == N // 10 and summary["answers"] == answers
    assert summary["cached_tokens"] == CACHED * answers
    assert summary["reasoning_tokens"] == REASONING * answers
    assert summary["completion_tokens"] > summary["reasoning_tokens"]  # reasoning is billed as output
    price = price_for("gpt-4o-mini", batch=mode == "batch")
    assert price is not None and price.cached_input is not None
    expected = cost(price, summary["prompt_tokens"], summary["completion_tokens"], summary["cached_tokens"])
    assert summary["cost_usd"] == pytest.approx(expected)
    if price.cached_input < price.input:  # the database's batch price has no cached discount
        assert summary["cost_usd"] < cost(price, summary["prompt_tokens"], summary["completion_tokens"])
    assert f"{summary['cached_tokens']:,} cached" in result.stderr
    assert f"{summary['reasoning_tokens']:,} reasoning" in result.stderr


def test_the_same_items_as_data_rows_with_a_template_give_the_same_answers(run_cli, fake_server, tmp_path):
    """The 500 items as data rows with --endpoint /v1/responses --template --schema
    send what the Batch lines send (input, text.format, max_output_tokens for
    --max-tokens, instructions for --system) and get the same answers."""
    server = fake_server()
    schema = schema_file(tmp_path)
    rows = items()
    template = tmp_path / "judge.txt"
    template.write_text(TEMPLATE)
    common = ("--base-url", server.base_url, "-m", "gpt-4o-mini", "--no-live")
    lines_out = tmp_path / "lines.jsonl"
    src = write_jsonl(tmp_path / "lines.in.jsonl", batch_lines(rows, schema))
    result = run_cli("run", src, "-o", lines_out, *common, "--validate", f"schema:{schema}")
    assert result.exit_code == 0, result.output

    rows_out = tmp_path / "rows.jsonl"
    data = write_jsonl(tmp_path / "rows.in.jsonl", rows)
    result = run_cli(
        "run", data, "-o", rows_out, *common, "--endpoint", "/v1/responses", "--template", template,
        "--id-field", "id", "--schema", schema,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert answers_of(rows_out) == answers_of(lines_out)
    assert all(rec["llmbatch"]["valid"] for rec in by_id(rows_out).values())

    sent = server.bodies
    server.received.clear()
    one = write_jsonl(tmp_path / "one.jsonl", rows[1:2])
    result = run_cli(
        "run", one, "-o", tmp_path / "one.out.jsonl", *common, "--endpoint", "responses", "--template",
        template, "--id-field", "id", "--schema", schema, "--system", "Be fair.", "--max-tokens", "300",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (body,) = server.bodies
    assert body["input"] == TEMPLATE.format(**rows[1]) and body["instructions"] == "Be fair."
    assert body["max_output_tokens"] == 300 and "max_tokens" not in body and "messages" not in body
    assert body["text"]["format"] == {"type": "json_schema", "name": "verdict", "schema": SCHEMA}
    assert any(b["input"] == body["input"] for b in sent)


def test_completions_and_moderations_on_the_same_rows(run_cli, fake_server, tmp_path):
    """The rows through /v1/completions (the prompt filled, choices[0].text the
    answer, --max-tokens its max_tokens) and /v1/moderations (merged rows carry the
    results, llm_flagged and the categories flagged; free: no tokens, no cost)."""
    server = fake_server()
    rows = items(50)
    template = tmp_path / "judge.txt"
    template.write_text(TEMPLATE)
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    common = (
        "--base-url",
        server.base_url,
        "--template",
        template,
        "--id-field",
        "id",
        "--no-live",
        "--merged",
    )

    out = tmp_path / "completions.jsonl"
    result = run_cli("run", data, "-o", out, *common, "-m", "gpt-3.5-turbo-instruct", "--endpoint",
                     "/v1/completions", "--max-tokens", "300", "--validate",
                     "regex:^echo: Judge")  # fmt: skip
    assert result.exit_code == 0, result.output
    merged = {r["id"]: r for r in read_jsonl(out)}
    assert len(merged) == 50
    for i, row in enumerate(rows):
        got = merged[row["id"]]
        assert got["llm_state"] == "valid" and got["llm_answer"].startswith("echo: " + TEMPLATE.format(**row))
        assert got["llm_finish_reason"] == "stop" and got["text"] == row["text"]  # the item kept
        assert got["llm_requests"] == (2 if i % 10 == 0 else 1)
    prompts = [b for b in server.bodies if "prompt" in b]
    assert len(prompts) == 55 and all(b["max_tokens"] == 300 and "messages" not in b for b in prompts)
    reasks = {b["prompt"] for b in prompts} - {TEMPLATE.format(**row) for row in rows}
    assert len(reasks) == 5
    for prompt in reasks:  # the prompt, the answer as written, and the validator's message
        asked, _, told = prompt.partition(BAD_ANSWER)
        assert asked.startswith("Judge item r") and asked.endswith('"bad":1}')
        said = "That answer is not valid: answer does not match regex '^echo: Judge'. Answer again, in full."
        assert told == f"\n\n{said}\n\n"

    out = tmp_path / "moderations.jsonl"
    summary_file = tmp_path / "summary.json"
    result = run_cli("run", data, "-o", out, *common, "-m", "omni-moderation-latest",
                     "--endpoint", "/v1/moderations", "--summary-json", summary_file)  # fmt: skip
    assert result.exit_code == 0, result.output
    merged = {r["id"]: r for r in read_jsonl(out)}
    assert len(merged) == 50
    for i, row in enumerate(rows):
        got = merged[row["id"]]
        violent = i % 5 == 0
        assert got["llm_state"] == "valid"
        assert got["llm_flagged"] is violent
        assert got["llm_categories"] == (["violence"] if violent else [])
        (result_,) = got["llm_answer"]
        assert result_["flagged"] is violent and result_["categories"]["violence"] is violent
        assert 0 <= result_["category_scores"]["violence"] <= 1
        assert got["llm_prompt_tokens"] == got["llm_completion_tokens"] == 0
    summary = orjson.loads(summary_file.read_bytes())
    assert summary["prompt_tokens"] == summary["completion_tokens"] == 0


@pytest.mark.parametrize(
    ("endpoint", "flags", "said"),
    [
        ("/v1/moderations", ("--validate", "json"), "--validate and --schema do not apply"),
        ("/v1/moderations", ("--schema", "SCHEMA"), "--validate and --schema do not apply"),
        ("/v1/moderations", ("--max-tokens", "10"), "--max-tokens has no meaning for /v1/moderations"),
        ("/v1/embeddings", ("--max-tokens", "10"), "--max-tokens has no meaning for /v1/embeddings"),
    ],
)
def test_flags_that_mean_nothing_for_the_endpoint_are_refused(
    run_cli, fake_server, tmp_path, endpoint, flags, said
):
    """Validators with moderations, --max-tokens with moderations or embeddings: exit 2
    with one line saying why, and nothing sent."""
    server = fake_server()
    data = write_jsonl(tmp_path / "rows.jsonl", items(3))
    flags = tuple(str(schema_file(tmp_path)) if f == "SCHEMA" else f for f in flags)
    result = run_cli(
        "run", data, "-o", tmp_path / "out.jsonl", "--base-url", server.base_url, "-m", "m",
        "--prompt", "{text}", "--id-field", "id", "--endpoint", endpoint, *flags,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert said in result.stderr and "nothing was sent" in result.stderr
    assert server.bodies == []


def test_a_bare_body_goes_by_endpoint_or_its_keys(run_cli, fake_server, tmp_path):
    """Bare bodies: `prompt` is completions, `input` embeddings; a Responses body
    (input and instructions) without --endpoint is refused saying to give it; with
    --endpoint /v1/responses it goes there."""
    server = fake_server()
    bodies = [
        {"id": "p", "model": "m", "prompt": "Once upon a time"},
        {"id": "e", "model": "m", "input": "embed me"},
    ]
    out = tmp_path / "out.jsonl"
    result = run_cli(
        "run", write_jsonl(tmp_path / "a.jsonl", bodies), "-o", out, "--base-url", server.base_url
    )
    assert result.exit_code == 0, result.output
    got = by_id(out)
    assert got["p"]["response"]["body"]["object"] == "text_completion"
    assert got["e"]["response"]["body"]["object"] == "list"

    responses_body = [{"id": "r", "model": "m", "input": "Say hi", "instructions": "Be brief."}]
    src = write_jsonl(tmp_path / "b.jsonl", responses_body)
    refused = run_cli("run", src, "-o", tmp_path / "b.out.jsonl", "--base-url", server.base_url)
    assert refused.exit_code == 2, refused.output
    assert "--endpoint /v1/responses" in refused.stderr and "not an embeddings request" in refused.stderr
    result = run_cli(
        "run",
        src,
        "-o",
        tmp_path / "b.out.jsonl",
        "--base-url",
        server.base_url,
        "--endpoint",
        "/v1/responses",
    )
    assert result.exit_code == 0, result.output
    (rec,) = read_jsonl(tmp_path / "b.out.jsonl")
    assert rec["response"]["body"]["object"] == "response"
    assert ENDPOINTS[RESPONSES].text(rec["response"]["body"]) == "echo: Say hi"


def test_a_responses_answer_cut_at_max_output_tokens_is_told_incomplete(run_cli, fake_server, tmp_path):
    """An answer longer than max_output_tokens comes back `status: incomplete`: its
    finish reason says `incomplete: max_output_tokens`, and --require-finish stop
    makes it invalid (a completed one is `stop`)."""
    server = fake_server()
    rows = [{"id": "long", "text": "@fake " + orjson.dumps({"answer": "word " * 40}).decode()},
            {"id": "short", "text": "@fake " + orjson.dumps({"answer": "ok"}).decode()}]  # fmt: skip
    out = tmp_path / "out.jsonl"
    result = run_cli(
        "run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, "--base-url", server.base_url, "-m", "m",
        "--endpoint", "/v1/responses", "--prompt", "{text}", "--id-field", "id", "--max-tokens", "5",
        "--require-finish", "stop", "--max-requests", "1", "--merged",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    got = {r["id"]: r for r in read_jsonl(out)}
    assert got["long"]["llm_finish_reason"] == "incomplete: max_output_tokens"
    assert got["long"]["llm_state"] == "invalid"
    assert "incomplete: max_output_tokens" in got["long"]["llm_error"]
    assert got["short"]["llm_finish_reason"] == "stop" and got["short"]["llm_state"] == "valid"


def test_estimate_counts_and_report_reads_the_new_endpoints(run_cli, fake_server, tmp_path):
    """`estimate` reads Responses bodies (input and instructions, max_output_tokens)
    and prices moderations at nothing; `report` reads a Responses output's cached and
    reasoning tokens."""
    schema = schema_file(tmp_path)
    rows = items(20)
    src = write_jsonl(tmp_path / "in.jsonl", batch_lines(rows, schema))
    est = run_cli("estimate", src, "--max-tokens", "100", "--json")
    assert est.exit_code == 0, est.output
    figures = orjson.loads(est.stdout)
    assert figures["requests"] == 20 and figures["answer_tokens_max"] == 20 * 100
    assert figures["prompt_tokens"] >= sum(len(TEMPLATE.format(**r)) for r in rows) // 4
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    est = run_cli("estimate", data, "--prompt", "{text}", "--endpoint", "/v1/moderations",
                  "-m", "omni-moderation-latest", "--json")  # fmt: skip
    assert est.exit_code == 0, est.output
    figures = orjson.loads(est.stdout)
    assert figures["requests"] == 20 and figures["cost_usd_high"] == 0

    server = fake_server()
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, "--base-url", server.base_url, "--validate", f"schema:{schema}",
                     "--no-live")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = run_cli("report", out, "--json")
    assert report.exit_code == 0, report.output
    got = orjson.loads(report.stdout)
    assert (
        got["valid"] == 20
        and got["cached_tokens"] == CACHED * 22
        and got["reasoning_tokens"] == REASONING * 22
    )
    assert got["cost_usd"] > 0 and got["unpriced_lines_by_model"] == {}
