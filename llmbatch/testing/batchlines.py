"""Batch API input files and their lines: a file checked the way OpenAI checks it
before a batch runs, and one line answered by the fake model, as the live endpoints
answer (the same ``@fake`` scripts, attempt counts shared with them).

What a line's outcome becomes in the result files:

- an answer: a 200 line of the output file (a ``nochoices`` fault too: a 200 whose body
  has no choices);
- an HTTP status from a script (``fail: [400]``, ``[429]``, ``[500]``...): a line of the
  error file with that status and an OpenAI error body, as OpenAI writes it;
- ``hang``, ``drop`` and ``garbage``, which have no meaning offline: a 500 line;
- a line the batch never ran: ``"response": null`` and ``error.code`` ``batch_expired``
  or ``batch_cancelled``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from llmbatch.core import endpoints
from llmbatch.providers import answers, script
from llmbatch.testing.api import injected_error, new_id
from llmbatch.testing.counts import Attempts, ServerStats, request_digest
from llmbatch.testing.parts import bad_part
from llmbatch.testing.quality import Quality

__all__ = ["ENDPOINTS", "MAX_LINES", "InputFile", "Line", "Result", "answer", "not_run", "read_input"]

ENDPOINTS = tuple(endpoints.ENDPOINTS)  # every endpoint the Batch API takes
MAX_LINES = 50_000  # requests in one batch at most, as OpenAI allows
MAX_ERRORS = 100  # a failed batch lists at most this many of its file's errors
NOT_RUN_MESSAGES = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
}


@dataclass(frozen=True, slots=True)
class Line:
    custom_id: str
    body: dict[str, Any]
    digest: bytes  # of the body as llmbatch sends it live (orjson), to meet its live re-asks
    tokens: int  # prompt tokens, counted as the live endpoints count them


@dataclass(frozen=True, slots=True)
class InputFile:
    """A checked input file: its lines, or the errors that fail its batch."""

    lines: tuple[Line, ...]
    model: str | None
    errors: tuple[dict[str, Any], ...]

    @property
    def tokens(self) -> int:
        return sum(line.tokens for line in self.lines)


@dataclass(frozen=True, slots=True)
class Result:
    """One line of a result file, and what it adds to the batch's counts and usage."""

    ok: bool  # the output file (else the error file)
    record: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    fault: str | None = None  # the scripted fault it played, for ServerStats.faults


def _error(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def read_input(content: bytes, endpoint: str) -> InputFile:
    """Every line a JSON object with a unique string ``custom_id``, ``method`` POST,
    ``url`` the batch's endpoint and an object ``body``; one model in the whole file."""
    lines: list[Line] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    rows = [(number, raw) for number, raw in enumerate(content.splitlines(), 1) if raw.strip()]
    if not rows:
        errors.append(_error("empty_file", "The input file has no requests.", None))
    if len(rows) > MAX_LINES:
        message = f"The input file has {len(rows):,} requests; a batch holds at most {MAX_LINES:,}."
        errors.append(_error("too_many_requests", message, None))
    for number, raw in rows:
        row = _object(raw)
        problem = _check(row, endpoint, seen)
        if problem is None:
            this_model = str(row["body"].get("model") or "")
            if not this_model:
                problem = ("missing_required_parameter", "The body has no 'model'.", "body.model")
            elif model is not None and this_model != model:
                message = f"The model '{this_model}' differs from '{model}': one model per batch file."
                problem = ("mismatched_model", message, "body.model")
            else:
                model = this_model
        if problem is not None:
            errors.append(_error(problem[0], problem[1], number, problem[2]))
            continue
        seen.add(row["custom_id"])
        body: dict[str, Any] = row["body"]
        known_by = request_digest(endpoint, orjson.dumps(body), body)
        lines.append(Line(row["custom_id"], body, known_by, answers.prompt_tokens(endpoint, body)))
    if errors:
        return InputFile((), model, tuple(errors[:MAX_ERRORS]))
    return InputFile(tuple(lines), model, ())


def _object(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _check(row: Any, endpoint: str, seen: set[str]) -> tuple[str, str, str | None] | None:
    if not isinstance(row, dict):
        return "invalid_json_line", "This line is not a JSON object.", None
    custom_id = row.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "missing_required_parameter", "The line has no string 'custom_id'.", "custom_id"
    if custom_id in seen:
        return "duplicate_custom_id", f"The custom_id '{custom_id}' appears more than once.", "custom_id"
    if row.get("method") != "POST":
        return "invalid_method", "The method must be 'POST'.", "method"
    if row.get("url") != endpoint:
        message = f"The url '{row.get('url')}' differs from the batch's endpoint '{endpoint}'."
        return "mismatched_endpoint", message, "url"
    if not isinstance(row.get("body"), dict):
        return "missing_required_parameter", "The line has no object 'body'.", "body"
    return None


def answer(
    line: Line, endpoint: str, attempts: Attempts, stats: ServerStats, quality: Quality | None = None
) -> Result:
    """Run one line: the fake model's answer to its attempt, counted (in `stats` by way
    and model; spoiled by `quality`, maybe)."""
    key = attempts.line(line.custom_id, line.digest)
    outcome = script.step(script.parse_script(line.body), attempts.count(key), line.body)
    attempts.answered(key)
    request_id = new_id("req_")
    if (problem := bad_part(endpoint, line.body)) is not None:
        error = {"message": problem, "type": "invalid_request_error", "code": "invalid_image_format"}
        return Result(False, _record(line.custom_id, 400, request_id, {"error": error}), fault="400")
    fault = outcome.fault
    if fault is None or fault == "nochoices":
        body = answers.answer_body(endpoint, line.body, outcome, new_id(answers.id_prefix(endpoint)))
        prompt, completion = answers.billed(body)
        spoiled = fault is None and quality is not None and quality.spoil(endpoint, line.body, body)
        stats.answered("batch", line.body.get("model"), prompt, completion, answers.cached(body), spoiled)
        if fault == "nochoices":
            body = {**answers.empty_body(endpoint), "usage": body.get("usage")}
        return Result(True, _record(line.custom_id, 200, request_id, body), prompt, completion, fault)
    status, error = injected_error(fault)
    return Result(False, _record(line.custom_id, status, request_id, {"error": error}), fault=str(fault))


def _record(custom_id: str, status: int, request_id: str, body: dict[str, Any]) -> dict[str, Any]:
    response = {"status_code": status, "request_id": request_id, "body": body}
    return {"id": new_id("batch_req_"), "custom_id": custom_id, "response": response, "error": None}


def not_run(line: Line, code: str) -> Result:
    """The error-file line of a request the batch never ran (expired or cancelled)."""
    error = {"code": code, "message": NOT_RUN_MESSAGES[code]}
    return Result(
        False, {"id": new_id("batch_req_"), "custom_id": line.custom_id, "response": None, "error": error}
    )
