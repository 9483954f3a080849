"""The endpoints llmbatch speaks, one class each (:mod:`.base` says what a class holds):
chat completions, embeddings, the Responses API, completions, moderations and
Anthropic's Messages API. Every
layer reads request bodies and answers through them, so a ``max_tokens`` or an answer
text means the same to the limits, the spending cap, `estimate`, the validators and the
output.

    endpoint = endpoint_of(request.url)
    endpoint.answer_ceiling(body)   # completion tokens it can be billed for, None: unbounded
    endpoint.prompt_chars(body)     # characters of prompt, for the token estimate
    endpoint.text(answer_body)      # the answer's text

A new endpoint is a module here with its class, added to `ENDPOINTS` (and taught to the
fake model and the test server).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmbatch.core.endpoints.base import CHARS_PER_TOKEN, DEFAULT_ANSWER_TOKENS, Endpoint
from llmbatch.core.endpoints.chat import CHAT, Chat
from llmbatch.core.endpoints.completions import COMPLETIONS, Completions
from llmbatch.core.endpoints.embeddings import EMBEDDINGS, Embeddings
from llmbatch.core.endpoints.messages import DEFAULT_MESSAGES_MAX_TOKENS, MESSAGES, Messages
from llmbatch.core.endpoints.moderations import MODERATIONS, Moderations
from llmbatch.core.endpoints.responses import RESPONSES, Responses, text_format_of

__all__ = [
    "CHARS_PER_TOKEN",
    "CHAT",
    "CHAT_ENDPOINT",
    "COMPLETIONS",
    "DEFAULT_ANSWER_TOKENS",
    "DEFAULT_MESSAGES_MAX_TOKENS",
    "EMBEDDINGS",
    "ENDPOINTS",
    "MESSAGES",
    "MODERATIONS",
    "RESPONSES",
    "Endpoint",
    "bare_endpoint",
    "endpoint_of",
    "known_endpoints",
    "normalise_endpoint",
    "text_format_of",
]

ENDPOINTS: dict[str, Endpoint] = {
    e.path: e for e in (Chat(), Embeddings(), Responses(), Completions(), Moderations(), Messages())
}
CHAT_ENDPOINT = ENDPOINTS[CHAT]
# A bare body's endpoint when --endpoint does not say: the first of these whose key it
# holds (messages, then prompt, then input: files made before the other endpoints keep
# meaning what they meant).
_BARE = tuple(ENDPOINTS[p] for p in (CHAT, COMPLETIONS, EMBEDDINGS))


def endpoint_of(url: str) -> Endpoint:
    """The endpoint of a request's (normalised) url; chat for one llmbatch does not know
    (a request is only ever built for a known endpoint)."""
    return ENDPOINTS.get(url, CHAT_ENDPOINT)


def bare_endpoint(body: Mapping[str, Any]) -> Endpoint | None:
    """The endpoint a bare body is for by its keys alone, or None."""
    for endpoint in _BARE:
        if endpoint.bare_key in body:
            return endpoint
    return None


def known_endpoints() -> str:
    """The endpoints, for a message: '/v1/chat/completions, /v1/embeddings, ...'."""
    return ", ".join(ENDPOINTS)


def normalise_endpoint(url: str) -> str | None:
    """'/v1/chat/completions', '/chat/completions' or 'chat/completions' -> the /v1 form;
    None for an endpoint llmbatch does not speak."""
    path = "/" + url.strip().lstrip("/")
    if not path.startswith("/v1/"):
        path = "/v1" + path
    return path if path in ENDPOINTS else None
