"""The values every layer passes around: a `Request` (what is sent for one item), the
`Completion` that answers it and its `Usage`."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmbatch.core.endpoints import CHAT
from llmbatch.core.errors import ProviderError

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


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of the prompt tokens, those read from the provider's cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Usage:
        u = body.get("usage")
        if not isinstance(u, dict):
            return cls()
        prompt, completion = u.get("prompt_tokens"), u.get("completion_tokens")
        details = u.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if details.__class__ is dict else None
        # int() only for what is not an int already (a float, a string): once per answer.
        return cls(
            prompt if prompt.__class__ is int else int(prompt or 0),
            completion if completion.__class__ is int else int(completion or 0),
            cached if cached.__class__ is int else int(cached or 0),
        )


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

    @property
    def choice(self) -> dict[str, Any] | None:
        body = self.body
        if isinstance(body, dict):
            choices = body.get("choices")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict):
                return choices[0]
        return None

    @property
    def text(self) -> str | None:
        """The first choice's message content, or None when there is none."""
        c = self.choice
        return None if c is None else choice_text(c)

    @property
    def finish_reason(self) -> str | None:
        c = self.choice
        return c.get("finish_reason") if c is not None else None

    @property
    def refusal(self) -> str | None:
        """The model's refusal, when it declined to answer: the first choice's
        `message.refusal`, or a `refusal` content part; None when it did not refuse."""
        # Read on every answer: the usual shapes are read straight (no exception is
        # raised for an embeddings body), anything odd falls to the except.
        body = self.body
        choices = body.get("choices") if isinstance(body, dict) else None
        if not choices:
            return None
        try:
            msg = choices[0]["message"]
            refusal = msg.get("refusal")
        except (TypeError, KeyError, IndexError, AttributeError):
            return None
        if refusal:
            return refusal if isinstance(refusal, str) else str(refusal)
        content = msg.get("content")
        return _refusal_part(content) if isinstance(content, list) else None

    @property
    def truncated(self) -> bool:
        """Whether the answer was cut at the request's answer ceiling (`finish_reason`
        "length")."""
        body = self.body
        choices = body.get("choices") if isinstance(body, dict) else None
        if not choices or not isinstance(choices, list):
            return False
        choice = choices[0]
        return isinstance(choice, dict) and choice.get("finish_reason") == "length"

    @property
    def cause(self) -> Cause | None:
        """What sets this answer apart: REFUSED when the model declined (`refusal`),
        TRUNCATED when it was cut at its ceiling (`truncated`), else None."""
        # The judge reads this on every answer. A chat answer with text content and no
        # refusal is told from one reading of its first choice (about half the cost of
        # asking `refusal` and `truncated` in turn); any other body (a refusal, content
        # parts, tool calls, another endpoint's answer) is asked through them, so an
        # endpoint that teaches those two its own shape gets a right `cause` too.
        body = self.body
        if body.__class__ is dict and "choices" in body:
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


def _refusal_part(parts: list[Any]) -> str | None:
    for part in parts:
        if isinstance(part, dict) and part.get("type") == "refusal":
            text = part.get("refusal")
            return text if isinstance(text, str) and text else "refused"
    return None


def choice_text(choice: Mapping[str, Any]) -> str | None:
    """A choice's message content (or a completion's text), or None when there is none."""
    msg = choice.get("message")
    content = msg.get("content") if isinstance(msg, dict) else choice.get("text")
    return content if isinstance(content, str) else None


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
    last: Completion | None = None  # the last answer, if any
    reason: str | None = None  # why the last answer is invalid
    cause: Cause | None = None  # the last answer refused or truncated (not for failures)
    error: ProviderError | None = None  # why the item failed
    via: str = "live"  # live, cached or batch
    batch_id: str | None = None
    order: int = 0  # the item's place among this run's items (for --ordered on a stream)
