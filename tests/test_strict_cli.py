"""--schema and --strict through `llmbatch run` against the loopback test server: what
is sent (strict: true or not), the one note, the exit 2, a pydantic model end to end,
and an output written before strict: true existed still counted as done."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import SAMPLES, by_id, write_jsonl

from llmbatch.validate.model import load_model, model_schema

pytestmark = pytest.mark.usefixtures("no_backoff", "api_key")

STRICT_READY = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["sentiment", "score"],
    "additionalProperties": False,
}
# The sample schema: "topics" is optional and "sentiment" has no type.
OUTSIDE = SAMPLES / "review.schema.json"
OUTSIDE_REASON = "#/properties/sentiment: no 'type'"


def reviews(
    tmp_path: Path, n: int = 3, script: dict[str, Any] | None = None, first: dict[str, Any] | None = None
) -> Path:
    """n review rows; `script` scripts every answer, `first` only r0's."""
    rows = []
    for i in range(n):
        text = f"Review {i}: the battery lasts for days."
        if (own := first if i == 0 and first is not None else script) is not None:
            text += "\n@fake " + orjson.dumps(own).decode()
        rows.append({"id": f"r{i}", "text": text})
    return write_jsonl(tmp_path / "in.jsonl", rows)


def run(run_cli: Any, server: Any, src: Path, out: Path, *flags: Any) -> Any:
    return run_cli(
        "run", src, "-o", out, "--provider", "openai", "--base-url", server.base_url, "--model", "m",
        "--prompt", "Classify: {text}", "--id-field", "id", "--no-live", *flags,
    )  # fmt: skip


def formats(server: Any) -> list[dict[str, Any]]:
    return [body["response_format"]["json_schema"] for body in server.bodies]


def notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "without strict: true" in line]


def test_a_schema_in_the_strict_subset_is_sent_with_strict_true(run_cli, fake_server, tmp_path):
    """Every request carries strict: true and the schema as written; no note is said."""
    server = fake_server()
    schema = tmp_path / "review.schema.json"
    schema.write_text(json.dumps(STRICT_READY))
    out = tmp_path / "out.jsonl"
    result = run(run_cli, server, reviews(tmp_path), out, "--schema", schema)
    assert result.exit_code == 0, result.output
    sent = formats(server)
    assert len(sent) == 3
    assert all(f == {"name": "review", "schema": STRICT_READY, "strict": True} for f in sent)
    assert notes(result.stderr) == []
    assert all(row["llmbatch"]["valid"] for row in by_id(out).values())


def test_strict_insists_exit_2_naming_the_first_reason_and_sends_nothing(run_cli, fake_server, tmp_path):
    """--strict with a schema outside the subset: exit 2, one error line with the reason
    and where, no request sent."""
    server = fake_server()
    out = tmp_path / "out.jsonl"
    result = run(run_cli, server, reviews(tmp_path), out, "--schema", OUTSIDE, "--strict")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "does not fit OpenAI's strict subset" in errors[0] and OUTSIDE_REASON in errors[0]
    assert server.bodies == []


def test_strict_without_a_schema_is_a_usage_error(run_cli, fake_server, tmp_path):
    """--strict alone has nothing to insist on: exit 2 before anything is sent."""
    server = fake_server()
    result = run(run_cli, server, reviews(tmp_path), tmp_path / "out.jsonl", "--strict")
    assert result.exit_code == 2, result.output
    assert "--strict needs --schema" in result.stderr
    assert server.bodies == []


def test_outside_the_subset_the_run_goes_on_non_strict_with_one_note(run_cli, fake_server, tmp_path):
    """Without --strict the schema goes without the strict key, one note says why, and
    answers are still validated locally: a scripted answer the schema refuses is invalid."""
    server = fake_server()
    src = reviews(tmp_path, 4, first={"answer": {"sentiment": "mixed", "score": 3}})
    out = tmp_path / "out.jsonl"
    result = run(run_cli, server, src, out, "--schema", OUTSIDE, "--max-requests", "2")
    assert result.exit_code == 1, result.output
    assert all("strict" not in f for f in formats(server))
    said = notes(result.stderr)
    assert len(said) == 1 and OUTSIDE_REASON in said[0], result.stderr
    lines = by_id(out)
    assert lines["r0"]["llmbatch"]["valid"] is False
    assert lines["r0"]["error"]["message"].startswith("schema at $.sentiment: 'mixed' is not one of")
    assert all(lines[f"r{i}"]["llmbatch"]["valid"] for i in (1, 2, 3))


def test_a_pydantic_model_as_the_schema_end_to_end(run_cli, fake_server, tmp_path):
    """--schema python:FILE.py:Model sends the model's schema, made strict, with strict:
    true; answers are validated with the model, a bad one re-asked and written with the
    model's reason."""
    server = fake_server()
    src = reviews(tmp_path, 3, first={"answer": {"sentiment": "positive", "score": 9, "topics": None}})
    out = tmp_path / "out.jsonl"
    spec = f"python:{SAMPLES / 'review_model.py'}:Review"
    result = run(run_cli, server, src, out, "--schema", spec, "--strict", "--max-requests", "2")
    assert result.exit_code == 1, result.output
    review = load_model(spec, SAMPLES)

    sent = formats(server)
    assert all(f["strict"] is True and f["name"] == "Review" for f in sent)
    assert sent[0]["schema"] == model_schema(review)
    lines = by_id(out)
    bad = lines["r0"]
    assert bad["llmbatch"]["valid"] is False and bad["llmbatch"]["requests"] == 2
    assert bad["error"]["message"] == "Review at $.score: Input should be less than or equal to 5"
    for cid in ("r1", "r2"):
        answer = lines[cid]["response"]["body"]["choices"][0]["message"]["content"]
        assert lines[cid]["llmbatch"]["valid"] is True
        review.model_validate_json(answer)


def test_a_bad_model_spec_is_one_line_exit_2(run_cli, fake_server, tmp_path):
    """A missing module or a name that is not a BaseModel: exit 2, one error line."""
    server = fake_server()
    for spec, message in [
        ("python:no_such_models_xyz:Review", "schema module 'no_such_models_xyz' not found"),
        (f"python:{SAMPLES / 'review_model.py'}:Field", "is not a pydantic model"),
    ]:
        result = run(run_cli, server, reviews(tmp_path), tmp_path / "out.jsonl", "--schema", spec)
        assert result.exit_code == 2, result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], result.stderr
    assert server.bodies == []


def test_an_output_written_before_strict_true_is_not_stale(run_cli, fake_server, tmp_path, monkeypatch):
    """An output written as llmbatch wrote it before strict: true (the same
    response_format without the key) is done on a rerun that now sends strict: true:
    nothing is stale, nothing is sent again."""
    import llmbatch.app.wiring as wiring

    server = fake_server()
    schema = tmp_path / "review.schema.json"
    schema.write_text(json.dumps(STRICT_READY))
    src, out = reviews(tmp_path, 5), tmp_path / "out.jsonl"

    def as_before(schema: dict[str, Any], name: str, strict: bool) -> dict[str, Any]:
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}

    with monkeypatch.context() as m:
        m.setattr(wiring, "response_format", as_before)
        first = run(run_cli, server, src, out, "--schema", schema)
    assert first.exit_code == 0, first.output
    assert all("strict" not in f for f in formats(server))
    written = out.read_bytes()

    again = run(run_cli, server, src, out, "--schema", schema)
    assert again.exit_code == 0, again.output
    assert len(server.bodies) == 5  # nothing asked again
    assert out.read_bytes() == written
    assert "stale" not in again.stderr

    # The next new item goes out with strict: true, and the old ones stay done.
    more = reviews(tmp_path, 6)
    third = run(run_cli, server, more, out, "--schema", schema)
    assert third.exit_code == 0, third.output
    assert len(server.bodies) == 6 and formats(server)[-1]["strict"] is True
