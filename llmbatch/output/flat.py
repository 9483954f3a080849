"""An output line as one flat row, for `llmbatch export`: the columns a merged row has
(`records.merged_record`), from a line of either format.

A merged row is already flat: it is taken as it is. A Batch-shaped line gives the
``llm_*`` columns alone (its data columns come from the input, joined by the caller):
the answer as its endpoint shows it (told by the response body's ``object``), the state,
the error, usage, the model (the block's ``model`` when --escalate wrote one, else the
body's), the finish time ``t`` as ``llm_t``, and every other field of the ``llmbatch``
block with no column of its own as ``llm_FIELD`` (what a later llmbatch adds). With
`spread`, a JSON object answer also gives one ``llm_answer.PROP`` column per top-level
property.
"""

from __future__ import annotations

from typing import Any

from llmbatch.core.endpoints import CHAT_ENDPOINT as CHAT
from llmbatch.core.endpoints import COMPLETIONS, EMBEDDINGS, ENDPOINTS, MODERATIONS, RESPONSES, Endpoint

__all__ = ["SPREAD_PREFIX", "batch_row", "spread"]

SPREAD_PREFIX = "llm_answer."

_BY_OBJECT = {
    "chat.completion": CHAT,
    "response": ENDPOINTS[RESPONSES],
    "text_completion": ENDPOINTS[COMPLETIONS],
    "list": ENDPOINTS[EMBEDDINGS],
}
# Fields of the llmbatch block that a column of their own already shows (or that are
# the rerun's, shown under their own names).
_SHOWN = frozenset({"line", "requests", "retries", "valid", "latency_ms", "usage", "state", "fault", "cause",
                    "via", "server", "fp", "batch_id", "metadata", "t", "model"})  # fmt: skip


def endpoint_of_body(body: Any) -> Endpoint:
    """The endpoint an answer body came from, told by its ``object`` (moderations: by
    its ``results``); chat when it cannot be told."""
    if not isinstance(body, dict):
        return CHAT
    found = _BY_OBJECT.get(body.get("object"))  # type: ignore[arg-type]
    if found is not None:
        return found
    return ENDPOINTS[MODERATIONS] if "results" in body else CHAT


def batch_row(rec: dict[str, Any]) -> dict[str, Any]:
    """The ``llm_*`` columns of a Batch-shaped output line."""
    meta: dict[str, Any] = rec["llmbatch"]
    response = rec.get("response") if isinstance(rec.get("response"), dict) else None
    body = response.get("body") if response is not None else None
    error = rec.get("error") if isinstance(rec.get("error"), dict) else None
    usage: dict[str, Any] = meta["usage"] if isinstance(meta.get("usage"), dict) else {}
    endpoint = endpoint_of_body(body)
    state = meta.get("state")
    if not isinstance(state, str):  # an older llmbatch's line
        state = (
            "valid"
            if meta.get("valid")
            else "invalid"
            if error and error.get("code") == "invalid_answer"
            else "failed"
        )
    model = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else None
    row: dict[str, Any] = {
        "llm_custom_id": rec.get("custom_id"),
        "llm_line": meta.get("line"),
        "llm_answer": endpoint.answer(body) if body is not None else None,
        "llm_state": state,
        "llm_valid": state == "valid",
        "llm_error": error.get("message") if error else None,
        "llm_error_code": error.get("code") if error else None,
        "llm_fault": meta.get("fault"),
        "llm_finish_reason": endpoint.finish_reason(body) if isinstance(body, dict) else None,
        "llm_cause": meta.get("cause"),
        "llm_requests": meta.get("requests"),
        "llm_prompt_tokens": usage.get("prompt_tokens", 0),
        "llm_completion_tokens": usage.get("completion_tokens", 0),
        "llm_cached_tokens": usage.get("cached_tokens", 0),
        "llm_cache_write_tokens": usage.get("cache_write_tokens", 0),
        "llm_reasoning_tokens": usage.get("reasoning_tokens", 0),
        "llm_model": meta["model"] if isinstance(meta.get("model"), str) else model,  # --escalate's
        "llm_latency_ms": meta.get("latency_ms"),
        "llm_t": meta.get("t"),
        "llm_fp": meta.get("fp"),
        "llm_server": meta.get("server"),
        "llm_via": meta.get("via"),
        "llm_batch_id": meta.get("batch_id"),
    }
    if isinstance(body, dict) and (extra := endpoint.columns(body)):
        row.update(extra)  # moderations: llm_flagged, llm_categories
    for key, value in meta.items():  # what later llmbatch versions add: t, model, ...
        if key not in _SHOWN and (value is not None or f"llm_{key}" not in row):
            row[f"llm_{key}"] = value
    return row


def spread(row: dict[str, Any], parse: Any) -> None:
    """Add one ``llm_answer.PROP`` column per top-level property of the row's answer when
    `parse` (the json validator's reading: fences allowed) makes a JSON object of it."""
    answer = row.get("llm_answer")
    if not isinstance(answer, str):
        return
    try:
        value = parse(answer)
    except ValueError:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            row[SPREAD_PREFIX + str(key)] = item
