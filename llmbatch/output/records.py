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
The Batch-shaped line keeps these in its ``llmbatch`` block, the merged row in
``llm_*`` columns. `read_line` reads them back from either.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple

import orjson

from llmbatch.core.errors import InputError, PermanentError, ProviderError
from llmbatch.core.values import Completion, Finished, State
from llmbatch.files.jsonl import JsonlWriter

__all__ = [
    "Finished",
    "Format",
    "Line",
    "OutputFile",
    "RejectsFile",
    "State",
    "StderrRejects",
    "batch_record",
    "completion_of",
    "custom_id_of",
    "input_line_of",
    "is_ours",
    "merged_record",
    "read_line",
    "read_tail",
    "reject_record",
    "server_hash",
]

Format = Literal["batch", "merged"]


def fault_of(error: ProviderError) -> str:
    """Whose fault a failure was: the request's (retrying cannot help) or transient."""
    return "request" if isinstance(error, PermanentError) else "transient"


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
    """The answer of a merged row: the text, or for embeddings the vector (one input)
    or the vectors (several)."""
    if last is None:
        return None
    body = last.body
    if isinstance(body, dict) and body.get("object") == "list" and isinstance(body.get("data"), list):
        vectors = [d.get("embedding") for d in body["data"] if isinstance(d, dict)]
        return vectors[0] if len(vectors) == 1 else vectors
    return last.text


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
            "llm_requests": f.requests,
            "llm_prompt_tokens": f.prompt_tokens,
            "llm_completion_tokens": f.completion_tokens,
            "llm_cached_tokens": f.cached_tokens,
            "llm_model": _model(f.last),
            "llm_latency_ms": round(f.latency_ms, 1),
            "llm_fp": fp_hex(req.fp),
            "llm_server": server,
            "llm_via": f.via,
            "llm_batch_id": f.batch_id,
        }
    )
    return base


def reject_record(err: InputError) -> dict[str, Any]:
    """A line of the rejects file: the input line number and what is wrong with it."""
    return {"line": err.line, "error": str(err)}


class OutputFile:
    """Where finished items go: one whole line each, appended (see `JsonlWriter` for
    when lines reach the disk). `error` is the first failed write, if any."""

    def __init__(
        self, path: Path, *, format: Format = "batch", server: str = "", stream: BinaryIO | None = None
    ) -> None:
        self.path = path
        self.format: Format = format
        self.server = server
        self._record = merged_record if format == "merged" else batch_record
        self._writer = JsonlWriter(path, stream=stream)
        self.lines = 0

    @property
    def error(self) -> OSError | None:
        return self._writer.error

    def write(self, finished: Finished) -> None:
        self._writer.write(self._record(finished, self.server))
        self.lines += 1

    backlog = 0  # finished items held back, not yet written (see InOrder)

    def discard(self, order: int) -> None:
        """An item of this run that will not be written (a stop left it)."""

    def sync(self) -> None:
        """Everything written so far, on disk now (before a record says it is)."""
        self._writer.sync()

    def close(self) -> None:
        self._writer.close()


class InOrder:
    """Writes finished items in the order the run took them from the input (--ordered
    on standard output): an item that finishes early waits for those before it. What
    waits counts as `backlog`, which the engine adds to its window, so memory stays
    bounded by the window however long one slow item takes."""

    def __init__(self, output: OutputFile) -> None:
        self._out = output
        self.path = output.path
        self._next = 0
        self._held: dict[int, Finished | None] = {}  # None: will not come (discarded)

    @property
    def error(self) -> OSError | None:
        return self._out.error

    @property
    def backlog(self) -> int:
        return len(self._held)

    def write(self, finished: Finished) -> None:
        self._held[finished.order] = finished
        self._release()

    def discard(self, order: int) -> None:
        self._held[order] = None
        self._release()

    def _release(self) -> None:
        held = self._held
        while self._next in held:
            finished = held.pop(self._next)
            if finished is not None:
                self._out.write(finished)
            self._next += 1

    def sync(self) -> None:
        self._out.sync()

    def close(self) -> None:
        """What is still held (items after a gap a stop left) goes out in order."""
        for order in sorted(self._held):
            finished = self._held[order]
            if finished is not None:
                self._out.write(finished)
        self._held.clear()
        self._out.close()


# --- read-back ---------------------------------------------------------------------


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


def read_tail(raw: bytes) -> Line | None:
    """`read_line` of a Batch-shaped line this llmbatch wrote, from its first and last
    bytes alone: a rerun reads millions of lines, and parsing every answer whole costs
    most of that. None when the line is not in that shape (the caller parses it)."""
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


def completion_of(rec: dict[str, Any]) -> Completion | None:
    """The answer an output line holds, as the validators see answers; None when the
    line holds none."""
    if "llm_custom_id" in rec:
        answer = rec.get("llm_answer")
        if isinstance(answer, list):
            vectors = answer if answer and isinstance(answer[0], list) else [answer]
            body: Any = {"object": "list", "data": [{"embedding": v} for v in vectors]}
        elif isinstance(answer, str):
            choice = {
                "message": {"role": "assistant", "content": answer},
                "finish_reason": rec.get("llm_finish_reason"),
            }
            body = {"object": "chat.completion", "choices": [choice]}
        else:
            return None
        return Completion(body=body)
    response = rec.get("response")
    if not isinstance(response, dict) or "body" not in response:
        return None
    return Completion(body=response["body"], status_code=int(response.get("status_code") or 200))


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


def custom_id_of(record: Any) -> str | None:
    """The custom_id of an output line of either format. A merged line is the data item
    itself, which may have a `custom_id` field of its own; `llm_custom_id` is ours
    (Batch lines never have it)."""
    if not isinstance(record, dict):
        return None
    cid = record.get("llm_custom_id", record.get("custom_id"))
    return cid if isinstance(cid, str) else None


def is_ours(first_line: bytes) -> bool:
    """Whether a file's first line is an llmbatch output line (`--fresh` empties only
    those)."""
    try:
        return read_line(orjson.loads(first_line)) is not None
    except orjson.JSONDecodeError:
        return False


class StderrRejects:
    """With `-o -` and no --rejects: each bad line told on stderr, one line each."""

    path = "standard error"
    error = None

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    def write(self, err: InputError) -> None:
        self.log(f"error: rejected line {err.line}: {err}")

    def close(self) -> None:
        return None


class RejectsFile:
    """Bad input lines, one JSON line each. Each run reads the whole input again and
    rejects its bad lines again, so the file is rewritten by every run (a bad line is
    listed once however many reruns it takes), and is only made when there is one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: JsonlWriter | None = None
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    @property
    def error(self) -> OSError | None:
        return self._writer.error if self._writer is not None else None

    def write(self, err: InputError) -> None:
        if self._writer is None:
            self.path.write_bytes(b"")
            self._writer = JsonlWriter(self.path)
        self._writer.write(reject_record(err))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
