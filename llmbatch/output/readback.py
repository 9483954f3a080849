"""The read-back of output lines by a later run: what a rerun needs to judge each line
(`Line`: its custom_id, format, state, fingerprint, fault and server), from either format
and from lines an older llmbatch wrote, and the answer a line holds (for
``--revalidate``). The shape of the lines is `llmbatch.output.records`'.

A line's ``cause`` (``refused``, ``truncated``) is not read back: a refused answer is
written invalid, and a rerun redoes it as any invalid one (``--redo invalid``). It sits
before the tail `read_tail` reads, so lines with it and lines without it (an older
llmbatch's) read alike.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import orjson

from llmbatch.core.endpoints import CHAT_ENDPOINT, EMBEDDINGS, ENDPOINTS, Endpoint
from llmbatch.core.values import Completion, State
from llmbatch.output.records import Format

__all__ = [
    "Line",
    "completion_of",
    "id_of",
    "input_line_of",
    "is_ours",
    "line_of",
    "read_line",
    "read_tail",
    "record_of",
]


class Line(NamedTuple):
    """What a rerun needs to know of one output line (a tuple: a rerun reads millions)."""

    custom_id: str
    format: Format
    state: State
    fp: int | None = None  # None: an older llmbatch wrote the line
    fault: str | None = None  # for a failure: "request" or "transient"
    server: str | None = None


# Error codes an older llmbatch wrote for failures that were the request's fault.
_TRANSIENT_CODES = frozenset(
    {"transient", "timeout", "connection", "rate_limited", "internal_error", "malformed"}
)


def _old_fault(code: Any) -> str:
    if not isinstance(code, str) or code in _TRANSIENT_CODES or code in ("http_408", "http_409"):
        return "transient"
    return "transient" if code.startswith("http_5") else "request"


def _fp(value: Any) -> int | None:
    if not isinstance(value, str) or len(value) != 16:
        return None
    try:
        fp = int(value, 16)
    except ValueError:
        return None
    return fp - (1 << 64) if fp >= 1 << 63 else fp


_TAIL = re.compile(rb'"via":"[a-z]+","server":"([0-9a-f]{0,16})","fp":"([0-9a-f]{16})","state":"([a-z]+)"}}')
_CUSTOM_ID = b'","custom_id":"'
_FAULTS = {b'"fault":"request",': "request", b'"fault":"transient",': "transient"}


def _tail(raw: bytes) -> tuple[re.Match[bytes], State, bytes] | None:
    """The tail's match, the state and the custom_id of a Batch-shaped line this
    llmbatch wrote, read from its first and last bytes alone; None when the line is not
    in that shape (the caller parses it)."""
    if not raw.startswith(b'{"id":"'):
        return None
    m = _TAIL.search(raw, max(0, len(raw) - 160))
    if m is None or raw[m.end() :].strip() or (state := _STATES.get(m[3].decode())) is None:
        return None
    # Inside a JSON string every quote is escaped: the first `","custom_id":"` is the key.
    at = raw.find(_CUSTOM_ID, 7)
    end = raw.find(b'"', at + len(_CUSTOM_ID)) if at > 0 else -1
    if end < 0:
        return None
    cid = raw[at + len(_CUSTOM_ID) : end]
    if b"\\" in cid:
        return None  # an escaped id: the parser knows best
    return m, state, cid


def read_tail(raw: bytes) -> Line | None:
    """`read_line` of a Batch-shaped line this llmbatch wrote, from its first and last
    bytes alone: a rerun reads millions of lines, and parsing every answer whole costs
    most of that. None when the line is not in that shape (the caller parses it)."""
    found = _tail(raw)
    if found is None:
        return None
    m, state, cid = found
    start = m.start()
    fault = _FAULTS.get(raw[start - 18 : start]) or _FAULTS.get(raw[start - 20 : start])
    value = int(m[2], 16)
    fp = value - (1 << 64) if value >= 1 << 63 else value
    return Line(cid.decode(), "batch", state, fp, fault, m[1].decode())


def read_line(rec: Any) -> Line | None:
    """The rerun's view of an output line of either format, None when it is not ours."""
    if not isinstance(rec, dict):
        return None
    cid = rec.get("llm_custom_id")
    if isinstance(cid, str):
        return _read_merged(cid, rec)
    cid = rec.get("custom_id")
    meta = rec.get("llmbatch")
    if not isinstance(cid, str) or not isinstance(meta, dict):
        return None
    error = rec.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    state = _state(meta.get("state"))
    if state is None:  # an older line
        if meta.get("valid") is True:
            state = State.VALID
        else:
            state = State.INVALID if code == "invalid_answer" else State.FAILED
    fault = meta.get("fault") if isinstance(meta.get("fault"), str) else None
    if state is State.FAILED and fault is None:
        fault = _old_fault(code)
    server = meta.get("server")
    return Line(cid, "batch", state, _fp(meta.get("fp")), fault, server if isinstance(server, str) else None)


def _read_merged(cid: str, rec: dict[str, Any]) -> Line:
    state = _state(rec.get("llm_state"))
    if state is None:
        if rec.get("llm_valid") is True:
            state = State.VALID
        else:
            state = State.INVALID if rec.get("llm_answer") is not None else State.FAILED
    fault = rec.get("llm_fault") if isinstance(rec.get("llm_fault"), str) else None
    if state is State.FAILED and fault is None:
        fault = _old_fault(rec.get("llm_error_code"))
    server = rec.get("llm_server")
    return Line(
        cid, "merged", state, _fp(rec.get("llm_fp")), fault, server if isinstance(server, str) else None
    )


_STATES = {s.value: s for s in State}


def _state(value: Any) -> State | None:
    return _STATES.get(value) if isinstance(value, str) else None


def completion_of(rec: dict[str, Any], endpoint: Endpoint = CHAT_ENDPOINT) -> Completion | None:
    """The answer an output line to a request of `endpoint` holds, as the validators see
    answers; None when the line holds none."""
    if "llm_custom_id" in rec:
        body = endpoint.body_of(rec.get("llm_answer"), rec.get("llm_finish_reason"))
        if body is None and endpoint is CHAT_ENDPOINT:  # an embeddings row read without its endpoint
            body = ENDPOINTS[EMBEDDINGS].body_of(rec.get("llm_answer"), None)
            endpoint = ENDPOINTS[EMBEDDINGS]
        return None if body is None else Completion(body=body, endpoint=endpoint)
    response = rec.get("response")
    if not isinstance(response, dict) or "body" not in response:
        return None
    status = int(response.get("status_code") or 200)
    return Completion(body=response["body"], status_code=status, endpoint=endpoint)


def input_line_of(rec: Any) -> int | None:
    """The input line number an output line of either format carries, if any."""
    if not isinstance(rec, dict):
        return None
    meta = rec.get("llmbatch")
    line = (
        rec.get("llm_line")
        if "llm_custom_id" in rec
        else meta.get("line")
        if isinstance(meta, dict)
        else None
    )
    return line if isinstance(line, int) and not isinstance(line, bool) and line >= 0 else None


def line_of(raw: bytes) -> Line | None:
    """`read_line` of a raw output line: None when it is not ours (not JSON, or not an
    llmbatch output line). The one test of which lines are ours, for the rerun's index,
    compaction and merge alike."""
    line = read_tail(raw)
    if line is not None:
        return line
    try:
        return read_line(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None


def record_of(raw: bytes) -> tuple[dict[str, Any], Line] | None:
    """A raw output line parsed whole, with its `Line`: for readers that want every field
    (report, export); None when it is not ours."""
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    line = read_line(rec)
    return None if line is None else (rec, line)


def id_of(raw: bytes) -> tuple[str, Format] | None:
    """The custom_id and format of a raw line of ours, None when it is not ours: what
    `line_of` would say of it, reading no more than a newest-line-per-id rewrite needs."""
    found = _tail(raw)
    if found is not None:
        return found[2].decode(), "batch"
    try:
        line = read_line(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None
    return (line.custom_id, line.format) if line is not None else None


def is_ours(first_line: bytes) -> bool:
    """Whether a file's first line is an llmbatch output line (`--fresh` empties only
    those)."""
    return line_of(first_line) is not None
