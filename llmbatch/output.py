"""The output contract: one line per finished item, in one of two formats, and the
read-back of those lines by a later run. A change to the format touches this file.

Batch-shaped (the default), OpenAI Batch output compatible, plus our ``llmbatch``
block::

    {"id": "batch_req_...", "custom_id": "r-17",
     "response": {"status_code": 200, "request_id": "...", "body": {...}},
     "error": null,
     "llmbatch": {"line": 17, "state": "valid", "requests": 2, "retries": 0, "valid": true,
                  "latency_ms": 812.4, "usage": {...}}}

Merged (``--merged``): the data item itself (or a bare body's metadata) plus ``llm_*``
columns, one flat row for spreadsheets and pandas. Embeddings keep their vectors in
both: in ``response.body`` and in ``llm_answer``.

Every line says what a rerun needs to judge it: the custom_id, the input line, the
state (valid / invalid / failed) and, for a failure, its error code and whose fault it
was (``request``: 400/404/422, retrying cannot help; ``transient``: worth another try).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from llmbatch.errors import InputError, PermanentError, ProviderError
from llmbatch.idset import IdSet
from llmbatch.jsonl import JsonlWriter, count_lines, drop_torn_tail, read_lines
from llmbatch.providers.base import Completion, Request

__all__ = [
    "Finished",
    "Format",
    "OutputFile",
    "State",
    "batch_record",
    "custom_id_of",
    "done_ids",
    "merged_record",
    "reject_record",
]

Format = Literal["batch", "merged"]


class State(enum.StrEnum):
    VALID = "valid"
    INVALID = "invalid"  # answered, but not valid after --max-requests answers
    FAILED = "failed"  # no usable answer: the request was refused, or retries ran out


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    """An item's outcome, however it was answered: what its output line is made from."""

    request: Request
    state: State
    requests: int = 0  # answers received, re-asks included
    retries: int = 0  # transport retries (429, 5xx, timeouts)
    latency_ms: float = 0.0
    # Usage summed over every answer of the item, re-asks included: what the provider
    # bills, so the output file adds up to the summary's totals.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last: Completion | None = None  # the last answer, if any
    reason: str | None = None  # why the last answer is invalid
    error: ProviderError | None = None  # why the item failed


def fault_of(error: ProviderError) -> str:
    """Whose fault a failure was: the request's (retrying cannot help) or transient."""
    return "request" if isinstance(error, PermanentError) else "transient"


def _error_block(f: Finished) -> dict[str, Any] | None:
    if f.error is not None:
        return {"code": f.error.code, "message": str(f.error)}
    if f.state is State.INVALID:
        return {"code": "invalid_answer", "message": f.reason or "invalid answer"}
    return None


def batch_record(f: Finished) -> dict[str, Any]:
    """An OpenAI Batch API output line, plus our `llmbatch` block."""
    req = f.request
    last = f.last
    response = None
    if last is not None:
        response = {"status_code": last.status_code, "request_id": last.request_id, "body": last.body}
    meta: dict[str, Any] = {
        "line": req.line,
        "state": f.state.value,
        "requests": f.requests,
        "retries": f.retries,
        "valid": f.state is State.VALID,
        "latency_ms": round(f.latency_ms, 1),
        "usage": {"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens},
    }
    if f.error is not None:
        meta["fault"] = fault_of(f.error)
    if req.metadata is not None:
        meta["metadata"] = req.metadata
    return {
        "id": f"batch_req_{last.request_id}"
        if last is not None and last.request_id
        else f"batch_req_line_{req.line}",
        "custom_id": req.custom_id,
        "response": response,
        "error": _error_block(f),
        "llmbatch": meta,
    }


def _answer(last: Completion | None) -> Any:
    """The answer of a merged row: the text, or for embeddings the vector (one input)
    or the vectors (several)."""
    if last is None:
        return None
    body = last.body
    if isinstance(body, dict) and body.get("object") == "list" and isinstance(body.get("data"), list):
        vectors = [d.get("embedding") for d in body["data"] if isinstance(d, dict)]
        return vectors[0] if len(vectors) == 1 else vectors
    return last.text


def merged_record(f: Finished) -> dict[str, Any]:
    """The data item itself plus the answer: one flat row for spreadsheets and pandas."""
    req = f.request
    base: dict[str, Any] = dict(req.item) if req.item is not None else {}
    if not base and isinstance(req.metadata, dict):
        base = dict(req.metadata)
    err = _error_block(f)
    base.update(
        {
            "llm_custom_id": req.custom_id,
            "llm_line": req.line,
            "llm_answer": _answer(f.last),
            "llm_state": f.state.value,
            "llm_valid": f.state is State.VALID,
            "llm_error": err["message"] if err else None,
            "llm_error_code": err["code"] if err else None,
            "llm_fault": fault_of(f.error) if f.error is not None else None,
            "llm_requests": f.requests,
            "llm_prompt_tokens": f.prompt_tokens,
            "llm_completion_tokens": f.completion_tokens,
        }
    )
    return base


def reject_record(err: InputError) -> dict[str, Any]:
    """A line of the rejects file: the input line number and what is wrong with it."""
    return {"line": err.line, "error": str(err)}


class OutputFile:
    """Where finished items go: one whole line each, appended (see `JsonlWriter` for
    when lines reach the disk). `error` is the first failed write, if any."""

    def __init__(self, path: Path, *, format: Format = "batch") -> None:
        self.path = path
        self.format: Format = format
        self._record = merged_record if format == "merged" else batch_record
        self._writer = JsonlWriter(path)

    @property
    def error(self) -> OSError | None:
        return self._writer.error

    def write(self, finished: Finished) -> None:
        self._writer.write(self._record(finished))

    def close(self) -> None:
        self._writer.close()


# --- read-back ---------------------------------------------------------------------


def custom_id_of(record: Any) -> str | None:
    """The custom_id of an output line of either format. A merged line is the data item
    itself, which may have a `custom_id` field of its own; `llm_custom_id` is ours
    (Batch lines never have it)."""
    if not isinstance(record, dict):
        return None
    cid = record.get("llm_custom_id", record.get("custom_id"))
    return cid if isinstance(cid, str) else None


def records(output: Path) -> Iterator[dict[str, Any]]:
    """The output's lines, parsed; a line that is not a JSON object is passed over."""
    for _, raw in read_lines(output):
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            yield rec


def done_ids(output: Path) -> IdSet:
    """The custom_ids already written to `output` (a torn last line is dropped first)."""
    if not output.exists():
        return IdSet()
    drop_torn_tail(output)
    ids = IdSet(count_lines(output))
    for rec in records(output):
        cid = custom_id_of(rec)
        if cid is not None:
            ids.add(cid)
    return ids
