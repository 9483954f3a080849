"""The output contract's read-back: what a rerun reads of a line is what was written,
by the fast path and the parser alike."""

from __future__ import annotations

import time

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbatch.core.errors import PermanentError, TransientError
from llmbatch.core.values import Completion, Finished, Request, State
from llmbatch.input.build import fingerprint
from llmbatch.output.readback import read_line, read_tail
from llmbatch.output.records import batch_record, merged_record, server_hash

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=8,
)
nasty_keys = st.sampled_from(["fault", "via", "server", "fp", "state", "custom_id", "llmbatch", '"}}', "x"])


@st.composite
def finished(draw: st.DrawFn) -> Finished:
    cid = draw(st.text(min_size=1, max_size=30))
    body = {"model": "m", "messages": [{"role": "user", "content": draw(st.text(max_size=40))}]}
    metadata = draw(st.none() | st.dictionaries(nasty_keys | st.text(max_size=8), json_values, max_size=4))
    req = Request(
        cid,
        body,
        line=draw(st.integers(1, 10**6)),
        metadata=metadata,
        fp=fingerprint("/v1/chat/completions", body),
    )
    state = draw(st.sampled_from(list(State)))
    error = None
    if state is State.FAILED:
        error = draw(
            st.sampled_from(
                [PermanentError("HTTP 400: no", code="invalid_request"), TransientError("HTTP 503")]
            )
        )
    answer = draw(st.text(max_size=60))
    request_id = draw(st.none() | st.text(max_size=12))
    last = None if error else Completion(
        body={"choices": [{"message": {"content": answer}, "finish_reason": "stop"}], "fp": answer},
        request_id=request_id,
    )  # fmt: skip
    return Finished(
        request=req,
        state=state,
        last=last,
        error=error,
        reason="bad" if state is State.INVALID else None,
        via=draw(st.sampled_from(["live", "cached", "batch"])),
        batch_id=draw(st.none() | st.text(max_size=12)),
    )


@settings(max_examples=300, deadline=None)
@given(finished(), st.sampled_from(["", server_hash("http://x/v1")]))
def test_the_fast_read_agrees_with_the_parser(f, server):
    """Whatever the ids, metadata and answers hold, the tail read either gives up or
    says exactly what the parser says; and the parser says what was written."""
    raw = orjson.dumps(batch_record(f, server))
    parsed = read_line(orjson.loads(raw))
    assert parsed is not None
    assert (parsed.custom_id, parsed.state, parsed.fp, parsed.server) == (
        f.request.custom_id,
        f.state,
        f.request.fp,
        server,
    )
    assert parsed.fault == (
        None if f.error is None else ("request" if isinstance(f.error, PermanentError) else "transient")
    )
    fast = read_tail(raw + b"\n")
    assert fast is None or fast == parsed


def test_the_fast_read_takes_the_common_line():
    """A plain line of this llmbatch is read without parsing it whole."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    req = Request("r-1", body, line=1, fp=fingerprint("/v1/chat/completions", body))
    f = Finished(request=req, state=State.VALID, last=Completion(body={"choices": []}, request_id="req_1"))
    assert read_tail(orjson.dumps(batch_record(f, "abcd1234")) + b"\n") == read_line(
        batch_record(f, "abcd1234")
    )


@settings(max_examples=100, deadline=None)
@given(finished())
def test_merged_rows_read_back_as_written(f):
    """A merged row carries the same facts in its llm_* columns."""
    rec = orjson.loads(orjson.dumps(merged_record(f, "s")))
    line = read_line(rec)
    assert line is not None
    assert (line.custom_id, line.format, line.state, line.fp, line.server) == (
        f.request.custom_id,
        "merged",
        f.state,
        f.request.fp,
        "s",
    )


def test_every_line_says_when_it_finished():
    """A line carries its finish time `t` (Unix ms) just before the tail a rerun reads,
    and the tail still reads fast; a merged row carries it as llm_t."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    req = Request("r-1", body, line=1, fp=fingerprint("/v1/chat/completions", body))
    f = Finished(request=req, state=State.FAILED, error=TransientError("HTTP 503"), cause=None)
    before = int(time.time() * 1000)
    rec = batch_record(f, "abcd1234")
    merged = merged_record(f, "abcd1234")
    after = int(time.time() * 1000)
    assert before <= rec["llmbatch"]["t"] <= after
    assert before <= merged["llm_t"] <= after
    keys = list(rec["llmbatch"])
    assert keys.index("usage") < keys.index("t") < keys.index("fault")
    assert keys[-4:] == ["via", "server", "fp", "state"]
    assert read_tail(orjson.dumps(rec) + b"\n") == read_line(rec)
