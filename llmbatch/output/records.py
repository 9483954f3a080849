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
request fingerprint (``fp``: a hash of the endpoint and the canonical body as sent), the
state (valid / invalid / failed) and, for a failure, its error code and whose fault it
was (``request``: 400/404/422, retrying cannot help; ``transient``: worth another try),
the server it was sent to (``server``: a hash of the base URL, never the URL itself),
and how it was answered (``via``: ``live``, ``cached``, or ``batch`` with the batch id).
An answer that was a refusal or was cut at its ceiling says so in ``cause``
(``refused``: written invalid; ``truncated``: valid or not, as the validators said);
a line without it (none, or an older llmbatch's) has no cause. ``t`` is when the line
was written (Unix time in milliseconds: `finish_ms`), what a report draws its timeline
from; an older llmbatch's lines have none. A run with ``--escalate`` says which model
answered in ``model`` (after ``t``, before the tail). The Batch-shaped line
keeps these in its ``llmbatch`` block, the merged row in ``llm_*`` columns.
`llmbatch.output.readback` reads them back from either; `llmbatch.output.writers`
appends them to the output.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Literal

from llmbatch.core.errors import InputError, PermanentError, ProviderError
from llmbatch.core.values import Completion, Finished, State

__all__ = [
    "Format",
    "batch_record",
    "fault_of",
    "finish_ms",
    "fp_hex",
    "merged_record",
    "reject_record",
    "server_hash",
]

Format = Literal["batch", "merged"]


def fault_of(error: ProviderError) -> str:
    """Whose fault a failure was: the request's (retrying cannot help) or transient."""
    return "request" if isinstance(error, PermanentError) else "transient"


def finish_ms() -> int:
    """Now, as a line's finish time ``t``: Unix time in whole milliseconds."""
    return int(time.time() * 1000)


def _error_block(f: Finished) -> dict[str, Any] | None:
    if f.error is not None:
        return {"code": f.error.code, "message": str(f.error)}
    if f.state is State.INVALID:
        return {"code": "invalid_answer", "message": f.reason or "invalid answer"}
    return None


def fp_hex(fp: int) -> str:
    return (fp & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big").hex()


def server_hash(base_url: str) -> str:
    """A short hash of where requests go: enough to see that it changed, and nothing
    of the URL itself (it may carry a token)."""
    return hashlib.blake2b(base_url.rstrip("/").encode(), digest_size=4).hexdigest()


def batch_record(f: Finished, server: str = "") -> dict[str, Any]:
    """An OpenAI Batch API output line, plus our `llmbatch` block."""
    req = f.request
    last = f.last
    state = f.state
    usage = {"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens}
    if f.cached_tokens:
        usage["cached_tokens"] = f.cached_tokens
    if f.reasoning_tokens:
        usage["reasoning_tokens"] = f.reasoning_tokens
    if f.cache_write_tokens:
        usage["cache_write_tokens"] = f.cache_write_tokens
    meta: dict[str, Any] = {
        "line": req.line,
        "requests": f.requests,
        "retries": f.retries,
        "valid": state is _VALID,
        "latency_ms": round(f.latency_ms * 10) / 10,  # to 0.1 ms; round(x, 1) costs twice as much
        "usage": usage,
    }
    if req.metadata is not None:
        meta["metadata"] = req.metadata
    if f.batch_id is not None:
        meta["batch_id"] = f.batch_id
    if f.cause is not None:
        meta["cause"] = f.cause  # refused, truncated
    meta["t"] = finish_ms()
    if f.model is not None:
        meta["model"] = f.model  # --escalate: the model that answered
    # What a rerun reads comes last, in this order, and nothing of the user's after it:
    # `read_tail` finds it at the end of the line without parsing the whole answer.
    if f.error is not None:
        meta["fault"] = fault_of(f.error)
    meta["via"] = f.via
    meta["server"] = server
    meta["fp"] = fp_hex(req.fp)
    meta["state"] = state  # a StrEnum: written as its value
    rid = last.request_id if last is not None else None
    return {
        "id": f"batch_req_{rid}" if rid else f"batch_req_line_{req.line}",
        "custom_id": req.custom_id,
        "response": None
        if last is None
        else {"status_code": last.status_code, "request_id": rid, "body": last.body},
        "error": None if state is _VALID and f.error is None else _error_block(f),
        "llmbatch": meta,
    }


_VALID = State.VALID


def _answer(last: Completion | None) -> Any:
    """The answer of a merged row, as its endpoint shows it: the text; for embeddings
    the vector (one input) or the vectors (several); for moderations the results."""
    if last is None:
        return None
    return last.endpoint.answer(last.body)


def _model(last: Completion | None) -> str | None:
    body = last.body if last is not None else None
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


def merged_record(f: Finished, server: str = "") -> dict[str, Any]:
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
            "llm_state": f.state,
            "llm_valid": f.state is State.VALID,
            "llm_error": err["message"] if err else None,
            "llm_error_code": err["code"] if err else None,
            "llm_fault": fault_of(f.error) if f.error is not None else None,
            "llm_finish_reason": f.last.finish_reason if f.last is not None else None,
            "llm_cause": f.cause,
            "llm_requests": f.requests,
            "llm_prompt_tokens": f.prompt_tokens,
            "llm_completion_tokens": f.completion_tokens,
            "llm_cached_tokens": f.cached_tokens,
            "llm_cache_write_tokens": f.cache_write_tokens,
            "llm_reasoning_tokens": f.reasoning_tokens,
            "llm_model": f.model or _model(f.last),
            "llm_latency_ms": round(f.latency_ms, 1),
            "llm_t": finish_ms(),
            "llm_fp": fp_hex(req.fp),
            "llm_server": server,
            "llm_via": f.via,
            "llm_batch_id": f.batch_id,
        }
    )
    if f.last is not None and (extra := f.last.endpoint.columns(f.last.body)):
        base.update(extra)  # moderations: llm_flagged, llm_categories
    return base


def reject_record(err: InputError) -> dict[str, Any]:
    """A line of the rejects file: the input line number and what is wrong with it."""
    return {"line": err.line, "error": str(err)}
