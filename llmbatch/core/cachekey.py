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
"""

from __future__ import annotations

import hashlib
import string
from typing import Literal

from llmbatch.core.endpoints import CHAT, RESPONSES

__all__ = [
    "CACHE_KEY",
    "CACHE_KEY_ENDPOINTS",
    "CACHE_KEY_MODES",
    "DEFAULT_CACHE_KEY_MODE",
    "CacheKeyMode",
    "fixed_prefix",
    "prompt_cache_key",
    "sends_key",
]

CACHE_KEY = "prompt_cache_key"
# The endpoints whose requests take it (OpenAI's chat completions and Responses API).
CACHE_KEY_ENDPOINTS = frozenset({CHAT, RESPONSES})

CacheKeyMode = Literal["openai", "auto", "on", "off"]
CACHE_KEY_MODES: tuple[CacheKeyMode, ...] = ("openai", "auto", "on", "off")
DEFAULT_CACHE_KEY_MODE: CacheKeyMode = "openai"  # only to OpenAI's own API
OPENAI_HOST = "api.openai.com"


def sends_key(mode: CacheKeyMode, base_url: str) -> bool:
    """Whether requests to `base_url` carry the key under `mode`."""
    if mode == "off":
        return False
    if mode in ("auto", "on"):
        return True
    return OPENAI_HOST in base_url.split("//", 1)[-1].split("/", 1)[0]


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
