"""The prompt cache key: what routes requests sharing a prefix to the same cache.

A provider's prompt cache halves (or better) the price of a shared prefix, but only for
requests that reach the same cache; OpenAI's ``prompt_cache_key`` routes them there. A
template's fixed part (its text before the first placeholder) and the system message
are exactly such a prefix, so a templated request carries a key made from them: a short
hash, the same for every item of the template, nothing of the text itself. A body with
a key of its own (``--param prompt_cache_key=...``) keeps it.

Which runs send it (``--prompt-cache-key``): by default only requests to OpenAI's own
API (other servers may refuse an unknown parameter); ``auto`` (or ``on``) to any server;
``off`` never. The key is left out of the fingerprint (it changes how a request is
served, not what is asked), so turning it on or off leaves earlier answers current.

Anthropic's Messages API caches by breakpoints instead: a ``cache_control`` block marks
the end of a prefix to cache (`with_breakpoints`). A templated request puts one on its
system block and, when the template's fixed prefix is long enough to matter, one on that
prefix, split off the user message as a text block of its own (the model reads the same
text). Sent by default to Anthropic's own API (documented, and free to ask for), to any
server with ``auto`` or ``on``, never with ``off``; a body that marks its own
breakpoints is left as it is. Like the key, they are added after the fingerprint.
Anthropic caches a prefix only from 1,024 tokens (most models; more for some), and a
breakpoint below that is ignored, not refused.
"""

from __future__ import annotations

import hashlib
import string
from typing import Any, Literal

import orjson

from llmbatch.core.endpoints import CHAT, RESPONSES

__all__ = [
    "ANTHROPIC_HOST",
    "CACHE_CONTROL",
    "CACHE_KEY",
    "CACHE_KEY_ENDPOINTS",
    "CACHE_KEY_MODES",
    "DEFAULT_CACHE_KEY_MODE",
    "PREFIX_BREAKPOINT_CHARS",
    "CacheKeyMode",
    "fixed_prefix",
    "prompt_cache_key",
    "sends_key",
    "with_breakpoints",
]

CACHE_KEY = "prompt_cache_key"
# The endpoints whose requests take it (OpenAI's chat completions and Responses API).
CACHE_KEY_ENDPOINTS = frozenset({CHAT, RESPONSES})

CacheKeyMode = Literal["openai", "auto", "on", "off"]
CACHE_KEY_MODES: tuple[CacheKeyMode, ...] = ("openai", "auto", "on", "off")
DEFAULT_CACHE_KEY_MODE: CacheKeyMode = "openai"  # only to OpenAI's own API
OPENAI_HOST = "api.openai.com"
ANTHROPIC_HOST = "api.anthropic.com"
CACHE_CONTROL = "cache_control"
# A fixed prefix shorter than this (about 256 tokens) stays inside the user message: it
# adds little to what the system's breakpoint caches.
PREFIX_BREAKPOINT_CHARS = 1024


def sends_key(mode: CacheKeyMode, base_url: str, own_host: str = OPENAI_HOST) -> bool:
    """Whether requests to `base_url` carry the key (or the breakpoints) under `mode`;
    the default mode sends them only to the provider's `own_host`."""
    if mode == "off":
        return False
    if mode in ("auto", "on"):
        return True
    return own_host in base_url.split("//", 1)[-1].split("/", 1)[0]


def _marked(block: dict[str, Any]) -> dict[str, Any]:
    return {**block, CACHE_CONTROL: {"type": "ephemeral"}}


def with_breakpoints(body: dict[str, Any], prefix: str) -> None:
    """Mark the fixed prefix of a templated Messages `body` for Anthropic's prompt cache,
    in place: the system as text blocks, the last one marked; the first user message's
    `prefix` (when at least `PREFIX_BREAKPOINT_CHARS` long) as a marked text block before
    the rest of its text. A body holding a ``cache_control`` of its own is left alone."""
    if b'"cache_control"' in orjson.dumps(body):
        return
    system = body.get("system")
    if isinstance(system, str) and system:
        body["system"] = [_marked({"type": "text", "text": system})]
    elif isinstance(system, list) and system and isinstance(system[-1], dict):
        body["system"] = [*system[:-1], _marked(system[-1])]
    messages = body.get("messages")
    if len(prefix) < PREFIX_BREAKPOINT_CHARS or not isinstance(messages, list) or not messages:
        return
    first = messages[0]
    if not isinstance(first, dict) or first.get("role") != "user":
        return
    content = first.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(blocks, list):
        return
    for at, block in enumerate(blocks):
        if isinstance(block, dict) and block.get("type") == "text":
            text = block.get("text")
            if not isinstance(text, str) or not text.startswith(prefix):
                return
            parts = [_marked({"type": "text", "text": prefix})]
            if len(text) > len(prefix):
                parts.append({**block, "text": text[len(prefix) :]})
            marked = {**first, "content": [*blocks[:at], *parts, *blocks[at + 1 :]]}
            body["messages"] = [marked, *messages[1:]]
            return


def fixed_prefix(template: str) -> str:
    """The template's text before its first placeholder (``{{`` read as a brace)."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            break
    return "".join(parts)


def prompt_cache_key(template: str, system: str | None) -> str | None:
    """The key of a template's requests, or None when they share no prefix (no system
    message, and the template starts with a placeholder)."""
    prefix = fixed_prefix(template)
    if not prefix and not system:
        return None
    digest = hashlib.blake2b(f"{system or ''}\0{prefix}".encode(), digest_size=8).hexdigest()
    return f"llmbatch-{digest}"
