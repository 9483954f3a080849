"""Tokens a request will cost, guessed before it is sent: what the token budget is
charged up front (and corrected by the real usage afterwards). No tokenizer is
downloaded: characters per token is calibrated from the usage servers report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_ANSWER_TOKENS", "TokenEstimator"]

# Default answer length charged to --tpm when the request sets no max_tokens and no
# answer has been seen yet.
DEFAULT_ANSWER_TOKENS = 256


class TokenEstimator:
    """Tokens a request will cost, before it is sent, without a tokenizer download.

    Characters / 4 is a fair first guess for English; the ratio is then calibrated from
    the real `usage.prompt_tokens` the server reports, and the answer length from the
    real completions seen so far.
    """

    __slots__ = ("_answered", "_answers", "_seen_chars", "_seen_tokens", "answer_tokens", "chars_per_token")

    def __init__(self) -> None:
        self.chars_per_token = 4.0
        self.answer_tokens = float(DEFAULT_ANSWER_TOKENS)
        self._seen_chars = 0
        self._seen_tokens = 0
        self._answers = 0
        self._answered = 0

    @staticmethod
    def prompt_chars(body: Mapping[str, Any]) -> int:
        n = 0
        messages = body.get("messages")
        if isinstance(messages, list):
            for m in messages:
                c = m.get("content") if isinstance(m, dict) else None
                if isinstance(c, str):
                    n += len(c) + 16  # role and framing tokens
                elif isinstance(c, list):
                    n += sum(len(p.get("text", "")) for p in c if isinstance(p, dict)) + 16
        inp = body.get("input")
        if isinstance(inp, str):
            n += len(inp)
        elif isinstance(inp, list):
            n += sum(len(x) for x in inp if isinstance(x, str))
        return n

    def prompt_tokens(self, body: Mapping[str, Any]) -> int:
        """The prompt's tokens alone (what a batch enqueues, what `estimate` sums)."""
        return int(self.prompt_chars(body) / self.chars_per_token) + 1

    def estimate(self, body: Mapping[str, Any], chars: int | None = None) -> int:
        if chars is None:
            chars = self.prompt_chars(body)
        prompt = chars / self.chars_per_token
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        answer = float(cap) if isinstance(cap, int | float) else self.answer_tokens
        if "input" in body and "messages" not in body:
            answer = 0.0  # embeddings have no answer
        return int(prompt + answer) + 1

    def observe(self, chars: int, prompt_tokens: int, completion_tokens: int) -> None:
        if prompt_tokens > 0 and chars > 0:
            self._seen_chars += chars
            self._seen_tokens += prompt_tokens
            self.chars_per_token = max(self._seen_chars / self._seen_tokens, 0.5)
        if completion_tokens > 0:
            self._answers += completion_tokens
            self._answered += 1
            self.answer_tokens = self._answers / self._answered
