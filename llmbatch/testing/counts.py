"""What the fake server counts: :class:`ServerStats`, what it saw, and :class:`Attempts`,
how often each request has been answered, which is what makes a ``@fake`` script play out
across re-asks (``{"bad": 1}``: the first answer is bad, the next one good).

A live request is known by its body (a digest of the bytes sent: `request_digest`); a
Batch API line by its ``custom_id``. A re-ask on the Responses API or completions extends
the prompt (the answer and the validator's message are appended), so there a scripted
request is known by its prompt up to its ``@fake`` object, which the re-ask leaves as it
was. The two meet when a live request carries the body of a line seen in a
batch (llmbatch sends the same bytes both ways): it continues that line's count and is
counted among that ``custom_id``'s answers, as a ``--then live`` follow-up is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from llmbatch.core.endpoints import COMPLETIONS, RESPONSES
from llmbatch.providers.script import script_root

__all__ = ["Attempts", "Key", "ServerStats", "digest", "request_digest"]

# The endpoints whose re-asks extend the prompt.
_EXTENDED = (RESPONSES, COMPLETIONS)


@dataclass(slots=True)
class ServerStats:
    """What the server saw. ``requests`` counts every request (``/_stats`` included);
    ``by_status`` every answer sent but ``/_stats`` (a hang or a drop sends none);
    ``faults`` the faults given, scripted or random, by kind; ``rate_limited`` the 429s
    of its own rate limits; the token totals sum the usage of the live answers sent.

    The Batch API's: ``uploads`` files uploaded, ``creates`` batches made (a create
    whose answer was lost included), ``cancels`` cancel requests for a batch that
    exists; ``answers`` how often each ``custom_id`` was answered, by batches and by live
    requests carrying its body (see :class:`Attempts`).

    ``by_way`` counts the 200 answers by way (``live``, ``batch``), ``by_model`` them and
    their usage per model (``spoiled``: made invalid by the quality knob)."""

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    rate_limited: int = 0
    authorizations: set[str] = field(default_factory=set)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    uploads: int = 0
    creates: int = 0
    cancels: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    # The 200 answers by way (live, batch), and per model: answers, their usage, and
    # how many the quality knob spoiled (llmbatch.testing.quality).
    by_way: dict[str, int] = field(default_factory=dict)
    by_model: dict[str, dict[str, int]] = field(default_factory=dict)

    def answered(
        self, way: str, model: Any, prompt: int, completion: int, cached: int = 0, spoiled: bool = False
    ) -> None:
        """A 200 answer sent (`way`: live, or a batch's line) by `model`."""
        self.by_way[way] = self.by_way.get(way, 0) + 1
        name = model if isinstance(model, str) else ""
        row = self.by_model.get(name)
        if row is None:
            row = self.by_model[name] = dict.fromkeys(_MODEL_COUNTS, 0)
        row["answers"] += 1
        row["prompt_tokens"] += prompt
        row["completion_tokens"] += completion
        row["cached_tokens"] += cached
        row["spoiled"] += spoiled

    def as_dict(self) -> dict[str, Any]:
        """The counters as ``GET /_stats`` sends them (the authorizations are left out)."""
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "faults": dict(self.faults),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "rate_limited": self.rate_limited,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "uploads": self.uploads,
            "creates": self.creates,
            "cancels": self.cancels,
            "answers": dict(self.answers),
            "by_way": dict(self.by_way),
            "by_model": {m: dict(row) for m, row in self.by_model.items()},
        }


_MODEL_COUNTS = ("answers", "prompt_tokens", "completion_tokens", "cached_tokens", "spoiled")


def digest(body: bytes) -> bytes:
    """What a live request is known by: the same bytes, the same request."""
    return hashlib.blake2b(body, digest_size=12).digest()


def request_digest(path: str, raw: bytes, body: dict[str, Any]) -> bytes:
    """What a live request to the endpoint at `path` is known by (see the module
    docstring); `raw` is the body's bytes as sent."""
    if path in _EXTENDED:
        root = script_root(body)
        if root is not None:
            return digest(f"{path}\0{body.get('model')}\0{root}".encode())
    return digest(raw)


Key = bytes | str
"""Whose attempts: a live request's body digest, or a batch line's custom_id."""


class Attempts:
    """Answers given so far, per request: a body digest's live count, a custom_id's count
    (kept in ``ServerStats.answers``), and which custom_id a body belongs to."""

    __slots__ = ("answers", "by_body", "ids")

    def __init__(self, answers: dict[str, int]) -> None:
        self.answers = answers
        self.by_body: dict[bytes, int] = {}
        # Filled by batch lines only: while it is empty, a live request that has no
        # script needs no digest at all (the fast path of the live endpoints).
        self.ids: dict[bytes, str] = {}

    def key(self, digest: bytes) -> Key:
        """Whose count a live request with this body continues."""
        return self.ids.get(digest, digest)

    def line(self, custom_id: str, digest: bytes) -> Key:
        """A batch line's key. Its custom_id takes over what its body was answered live
        before (a live run first, then a batch)."""
        earlier = self.by_body.pop(digest, 0)
        if earlier:
            self.answers[custom_id] = self.answers.get(custom_id, 0) + earlier
        self.ids[digest] = custom_id
        return custom_id

    def count(self, key: Key) -> int:
        """The number of the next attempt (0-based): the answers given so far."""
        if isinstance(key, str):
            return self.answers.get(key, 0)
        return self.by_body.get(key, 0)

    def answered(self, key: Key) -> None:
        if isinstance(key, str):
            self.answers[key] = self.answers.get(key, 0) + 1
        else:
            self.by_body[key] = self.by_body.get(key, 0) + 1
