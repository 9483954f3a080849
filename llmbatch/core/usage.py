"""What an answer used: the tokens the provider bills, in chat's terms (prompt,
completion) whatever the endpoint calls them (the Responses API's and Anthropic's input
and output)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Usage"]


# Not frozen: see `llmbatch.core.values.Request` (made for every answer).
@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of the prompt tokens, those read from the provider's cache
    # Of the completion tokens, those the model spent reasoning: billed as output, never
    # seen in the answer text.
    reasoning_tokens: int = 0
    # Of the prompt tokens, those written to the provider's cache (Anthropic's
    # cache_creation_input_tokens): billed above the input price.
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Usage:
        """The usage of a chat completions body (completions and embeddings say it the
        same way): ``prompt_tokens``, ``completion_tokens`` and their details."""
        u = body.get("usage")
        if not isinstance(u, dict):
            return cls()
        prompt, completion = u.get("prompt_tokens"), u.get("completion_tokens")
        details = u.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if details.__class__ is dict else None
        details = u.get("completion_tokens_details")
        reasoning = details.get("reasoning_tokens") if details.__class__ is dict else None
        # int() only for what is not an int already (a float, a string): once per answer.
        return cls(
            prompt if prompt.__class__ is int else int(prompt or 0),
            completion if completion.__class__ is int else int(completion or 0),
            cached if cached.__class__ is int else int(cached or 0),
            reasoning if reasoning.__class__ is int else int(reasoning or 0),
        )

    @classmethod
    def from_responses(cls, body: Mapping[str, Any]) -> Usage:
        """The usage of a Responses API body: ``input_tokens`` (with
        ``input_tokens_details.cached_tokens``) and ``output_tokens`` (with
        ``output_tokens_details.reasoning_tokens``), told as prompt and completion."""
        u = body.get("usage")
        if not isinstance(u, dict):
            return cls()
        details = u.get("input_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        details = u.get("output_tokens_details")
        reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else 0
        return cls(
            int(u.get("input_tokens") or 0),
            int(u.get("output_tokens") or 0),
            int(cached or 0),
            int(reasoning or 0),
        )

    @classmethod
    def from_messages(cls, body: Mapping[str, Any]) -> Usage:
        """The usage of an Anthropic Messages body: ``input_tokens`` (what the cache did
        not hold), ``cache_read_input_tokens``, ``cache_creation_input_tokens`` and
        ``output_tokens``; the prompt tokens are all three inputs, of which cached (read)
        and cache writes."""
        u = body.get("usage")
        if not isinstance(u, dict):
            return cls()
        read = int(u.get("cache_read_input_tokens") or 0)
        write = int(u.get("cache_creation_input_tokens") or 0)
        fresh = int(u.get("input_tokens") or 0)
        return cls(fresh + read + write, int(u.get("output_tokens") or 0), read, 0, write)
