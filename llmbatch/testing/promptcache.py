"""The fake server's prompt cache (``FakeServer(prompt_cache=PromptCache())``, or
``--prompt-cache``): answers report ``cached_tokens`` for the part of their prompt that
an earlier request on the same machine already sent, as OpenAI's prompt caching does.

A model of it, not a copy: the server has `machines` caches. A request carrying a
``prompt_cache_key`` goes to the machine its key hashes to; one without a key to any of
them at random (a busy key's overflow, or a prefix hashed elsewhere). A prompt is cached
in blocks: prefixes of at least `min_tokens` tokens (1,024, as OpenAI's), growing by
`block_tokens` (128), each known by a digest of its text (the fake tokenizer's four
characters a token). An answer's cached tokens are those of the longest prefix its
machine holds, and then every prefix of this prompt is held, at the request's arrival
(requests of the same prefix in flight together after the first are served from it).
Each machine keeps its `capacity` newest prefixes: an input that interleaves many keys
pushes a key's prefix out before its next request, which is what a look-ahead
grouping the keys is for.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from typing import Any

from llmbatch.core.endpoints import RESPONSES
from llmbatch.providers.script import prompt_texts

__all__ = ["CHARS_PER_TOKEN", "PromptCache"]

CHARS_PER_TOKEN = 4  # the fake model's tokenizer (script.count_tokens)


class PromptCache:
    """Prefixes held per machine (see the module docstring)."""

    def __init__(
        self,
        *,
        machines: int = 4,
        capacity: int = 100_000,
        min_tokens: int = 1024,
        block_tokens: int = 128,
        seed: int = 0,
    ) -> None:
        if machines < 1 or capacity < 1 or min_tokens < 1 or block_tokens < 1:
            raise ValueError("machines, capacity, min_tokens and block_tokens must be positive")
        self.machines: list[OrderedDict[bytes, None]] = [OrderedDict() for _ in range(machines)]
        self.capacity = capacity
        self.min_chars = min_tokens * CHARS_PER_TOKEN
        self.block_chars = block_tokens * CHARS_PER_TOKEN
        self.rng = random.Random(seed)
        self.hits = 0  # answers with cached tokens

    def _machine(self, key: Any) -> OrderedDict[bytes, None]:
        if isinstance(key, str) and key:
            at = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big")
        else:
            at = self.rng.randrange(len(self.machines))
        return self.machines[at % len(self.machines)]

    def cached_tokens(self, body: dict[str, Any]) -> int:
        """The tokens of `body`'s prompt its machine holds; the prompt is held from now."""
        text = "\n".join(prompt_texts(body))
        if len(text) < self.min_chars:
            return 0
        held = self._machine(body.get("prompt_cache_key"))
        digest = hashlib.blake2b(text[: self.min_chars].encode(), digest_size=12)
        end = self.min_chars
        cached = 0
        while True:
            key = digest.digest()
            if key in held:
                held.move_to_end(key)
                cached = end
            else:
                held[key] = None
                if len(held) > self.capacity:
                    held.popitem(last=False)
            if end + self.block_chars > len(text):
                break
            digest.update(text[end : end + self.block_chars].encode())
            end += self.block_chars
        if cached:
            self.hits += 1
        return cached // CHARS_PER_TOKEN

    def serve(self, path: str, body: dict[str, Any], payload: dict[str, Any]) -> int:
        """Put the cached tokens of `body`'s prompt in the answer's usage; returns them."""
        usage = payload.get("usage")
        if not isinstance(usage, dict):
            return 0
        responses = path == RESPONSES
        prompt = usage.get("input_tokens" if responses else "prompt_tokens") or 0
        cached = min(self.cached_tokens(body), prompt)
        if cached:
            details = "input_tokens_details" if responses else "prompt_tokens_details"
            usage[details] = {"cached_tokens": cached}
        return cached
