"""The one reader of request bodies: for each endpoint, what bounds the answer, how big
the prompt is, and what kind of request it is. The limits (the token estimate), the
spending cap (the worst case reserved) and `estimate` all read bodies through here, so
a ``max_tokens`` means the same to each of them.

    endpoint = endpoint_of(request.url)
    endpoint.answer_ceiling(body)   # completion tokens it can be billed for, None: unbounded
    endpoint.prompt_chars(body)     # characters of prompt, for the token estimate
    endpoint.prompt_bound(body)     # an upper bound on its prompt tokens (bytes)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "CHARS_PER_TOKEN",
    "CHAT",
    "EMBEDDINGS",
    "ENDPOINTS",
    "Endpoint",
    "endpoint_of",
    "normalise_endpoint",
]

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"

# Characters a chat message costs beyond its text: the role and the framing tokens.
MESSAGE_FRAMING = 16
# Characters per token before any usage calibrates it: a fair first guess for English.
CHARS_PER_TOKEN = 4.0
# The answer length expected of a request whose body does not bound it, before any
# answer has been seen (the token budget's charge, `estimate`'s guess).
DEFAULT_ANSWER_TOKENS = 256


def _tokens(value: Any) -> int | None:
    """A token count given in a body: a positive number (a float is cut to an int);
    anything else (a bool, a string, 0, a negative) bounds nothing."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return int(value) if value >= 1 else None


def _text_chars(value: Any) -> int:
    """Characters of text in a content value: a string, or a list of parts (strings or
    objects with a "text")."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        n = 0
        for part in value:
            if isinstance(part, str):
                n += len(part)
            elif isinstance(part, dict) and isinstance(text := part.get("text"), str):
                n += len(text)
        return n
    return 0


class Endpoint:
    """What llmbatch knows of one endpoint's request bodies.

    `ceiling_keys` name the body fields that bound the answer, the first one present
    winning; an endpoint whose `answers` is False is billed no completion tokens (its
    ceiling is 0). `prompt_keys` name the fields that carry the prompt."""

    path: str = ""
    name: str = ""
    ceiling_keys: tuple[str, ...] = ()
    prompt_keys: tuple[str, ...] = ()
    answers: bool = True

    def answer_ceiling(self, body: Mapping[str, Any]) -> int | None:
        """The most completion tokens the request can be billed for: 0 when the
        endpoint answers none, None when nothing in the body bounds it."""
        if not self.answers:
            return 0
        for key in self.ceiling_keys:
            value = body.get(key)
            if value is not None:
                return _tokens(value)
        return None

    def prompt_chars(self, body: Mapping[str, Any]) -> int:
        """Characters of prompt text (what the token estimate divides)."""
        return sum(_text_chars(body.get(key)) for key in self.prompt_keys)

    def prompt_tokens(self, body: Mapping[str, Any]) -> int:
        """The prompt's tokens, guessed from its characters (no tokenizer)."""
        return int(self.prompt_chars(body) / CHARS_PER_TOKEN) + 1

    def prompt_bound(self, body: Mapping[str, Any]) -> int:
        """An upper bound on the prompt's tokens: the UTF-8 bytes of what carries it
        (a token is at least a byte)."""
        return sum(len(orjson.dumps(part)) for key in self.prompt_keys if (part := body.get(key)) is not None)

    def __repr__(self) -> str:
        return f"<endpoint {self.path}>"


class Chat(Endpoint):
    path = CHAT
    name = "chat"
    ceiling_keys = ("max_completion_tokens", "max_tokens")
    prompt_keys = ("messages",)

    def prompt_chars(self, body: Mapping[str, Any]) -> int:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return 0
        n = 0
        for m in messages:
            if isinstance(m, dict):
                n += _text_chars(m.get("content")) + MESSAGE_FRAMING
        return n


class Embeddings(Endpoint):
    path = EMBEDDINGS
    name = "embeddings"
    prompt_keys = ("input",)
    answers = False


ENDPOINTS: dict[str, Endpoint] = {e.path: e for e in (Chat(), Embeddings())}
_CHAT = ENDPOINTS[CHAT]


def endpoint_of(url: str) -> Endpoint:
    """The endpoint of a request's (normalised) url; chat for one llmbatch does not know
    (a request is only ever built for a known endpoint)."""
    return ENDPOINTS.get(url, _CHAT)


def normalise_endpoint(url: str) -> str | None:
    """'/v1/chat/completions', '/chat/completions' or 'chat/completions' -> the /v1 form;
    None for an endpoint llmbatch does not speak."""
    path = "/" + url.strip().lstrip("/")
    if not path.startswith("/v1/"):
        path = "/v1" + path
    return path if path in ENDPOINTS else None
