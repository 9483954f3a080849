"""The values every layer passes around: a `Request` (what is sent for one item), the
`Completion` that answers it and its `Usage`. A completion reads its answer (text,
finish reason, usage) through its endpoint (:mod:`llmbatch.core.endpoints`)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmbatch.core.endpoints import CHAT, CHAT_ENDPOINT, Endpoint
from llmbatch.core.endpoints.chat import choice_text, first_choice
from llmbatch.core.errors import ProviderError
from llmbatch.core.usage import Usage

__all__ = [
    "Cause",
    "Completion",
    "Finished",
    "Request",
    "State",
    "Usage",
    "choice_text",
]


# The values made for every request (Request, Usage, Completion, and the output's
# Finished) are not frozen: a frozen dataclass sets each field through
# object.__setattr__, which costs about 5 us a request over the four of them at
# thousands of requests a second. Nothing changes them after they are made.
@dataclass(slots=True)
class Request:
    """One item's request. `body` is sent as is; the rest stays on our side."""

    custom_id: str
    body: dict[str, Any]
    url: str = CHAT
    line: int = 0
    # What the output needs back but the API must never see: bare bodies' `metadata`,
    # and the data item that filled a template (merged output, python validators).
    metadata: Any = None
    item: dict[str, Any] | None = None
    # A hash of what is sent (endpoint and canonical body): a rerun tells an answer to
    # this very request from one to an older prompt by it. 0 when not computed.
    fp: int = 0
    # The fingerprint an older llmbatch gave this body, when it differs (a body with a
    # key fingerprints now leave out): a line carrying it is not stale. 0: the same.
    fp_before: int = 0
    # Bytes of attached files (images, PDFs) the body carries, as base64: what bounds the
    # bytes in flight (--max-inflight-bytes). 0 for a body without.
    attached: int = 0


class Cause(enum.StrEnum):
    """What sets an item's last answer apart, beside its state (the output's `cause`)."""

    REFUSED = "refused"  # the model declined to answer: invalid, not asked again unless asked
    TRUNCATED = "truncated"  # cut at the answer ceiling (finish_reason "length"); judged as any


_REFUSED, _TRUNCATED = Cause.REFUSED, Cause.TRUNCATED


@dataclass(slots=True)
class Completion:
    """A 2xx answer. The body is kept as the parsed JSON, not as SDK models: building
    pydantic objects per response is most of the SDK's cost and we only re-serialise."""

    body: Any
    status_code: int = 200
    usage: Usage = field(default_factory=Usage)
    headers: Mapping[str, str] = field(default_factory=dict)
    request_id: str | None = None
    latency_ms: float = 0.0

    # The endpoint that answered: it reads the body (chat's unless told otherwise).
    endpoint: Endpoint = CHAT_ENDPOINT

    @property
    def choice(self) -> dict[str, Any] | None:
        """A chat or completions body's first choice (None for the other endpoints)."""
        return first_choice(self.body)

    @property
    def text(self) -> str | None:
        """The answer's text (chat: the first choice's message content), or None when
        there is none."""
        return self.endpoint.text(self.body)

    @property
    def finish_reason(self) -> str | None:
        return self.endpoint.finish_reason(self.body)

    @property
    def truncated(self) -> bool:
        """Whether the answer was cut off by its ceiling (chat: finish_reason length;
        Responses: incomplete, max_output_tokens)."""
        return self.endpoint.truncated(self.body)

    @property
    def refusal(self) -> str | None:
        """The model's refusal, when it declined to answer (chat: `message.refusal` or a
        `refusal` content part; Responses: a `refusal` part of its output); None when it
        did not refuse."""
        return self.endpoint.refusal(self.body)

    @property
    def cause(self) -> Cause | None:
        """What sets this answer apart: REFUSED when the model declined (`refusal`),
        TRUNCATED when it was cut at its ceiling (`truncated`), else None."""
        # The judge reads this on every answer. A chat answer with text content and no
        # refusal is told from one reading of its first choice (about half the cost of
        # asking `refusal` and `truncated` in turn); any other body (a refusal, content
        # parts, tool calls, another endpoint's answer) is asked through them.
        body = self.body
        if self.endpoint is CHAT_ENDPOINT and body.__class__ is dict and "choices" in body:
            try:
                choice = body["choices"][0]
                msg = choice["message"]
                if not msg.get("refusal") and msg["content"].__class__ is str:
                    return _TRUNCATED if choice.get("finish_reason") == "length" else None
            except (TypeError, KeyError, IndexError, AttributeError):
                pass
        if self.refusal is not None:
            return _REFUSED
        return _TRUNCATED if self.truncated else None


class State(enum.StrEnum):
    VALID = "valid"
    INVALID = "invalid"  # answered, but not valid after --max-requests answers
    FAILED = "failed"  # no usable answer: the request was refused, or retries ran out


@dataclass(slots=True, kw_only=True)  # not frozen: see Request
class Finished:
    """An item's outcome, however it was answered: what its output line is made from."""

    request: Request
    state: State
    requests: int = 0  # answers received, re-asks included
    retries: int = 0  # transport retries (429, 5xx, timeouts)
    capacity_429s: int = 0  # of those, 429s for want of the tier's capacity (flex)
    latency_ms: float = 0.0
    # Usage summed over every answer of the item, re-asks included: what the provider
    # bills, so the output file adds up to the summary's totals.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of the prompt tokens, those the provider read from its cache
    reasoning_tokens: int = 0  # of the completion tokens, those spent reasoning
    cache_write_tokens: int = 0  # of the prompt tokens, those written to the provider's cache
    last: Completion | None = None  # the last answer, if any
    reason: str | None = None  # why the last answer is invalid
    cause: Cause | None = None  # the last answer refused or truncated (not for failures)
    error: ProviderError | None = None  # why the item failed
    via: str = "live"  # live, cached or batch
    batch_id: str | None = None
    order: int = 0  # the item's place among this run's items (for --ordered on a stream)
    # --escalate: the model that answered (0: the first; n: the n-th --escalate model),
    # and its name when the run escalates (the output's `model`; None: not escalating).
    rung: int = 0
    model: str | None = None
