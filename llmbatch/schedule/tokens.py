"""Tokens a request will cost, guessed before it is sent: what the token budget is
charged up front (and corrected by the real usage afterwards). No tokenizer is
downloaded: characters per token is calibrated from the usage servers report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmbatch.core.endpoints import CHARS_PER_TOKEN, DEFAULT_ANSWER_TOKENS, Endpoint

__all__ = ["TokenEstimator"]


class TokenEstimator:
    """Tokens a request will cost, before it is sent, without a tokenizer download.

    Characters / 4 is a fair first guess for English; the ratio is then calibrated from
    the real `usage.prompt_tokens` the server reports, and the answer length from the
    real completions seen so far.
    """

    __slots__ = ("_answered", "_answers", "_seen_chars", "_seen_tokens", "answer_tokens", "chars_per_token")

    def __init__(self) -> None:
        self.chars_per_token = CHARS_PER_TOKEN
        self.answer_tokens = float(DEFAULT_ANSWER_TOKENS)
        self._seen_chars = 0
        self._seen_tokens = 0
        self._answers = 0
        self._answered = 0

    def estimate(self, endpoint: Endpoint, body: Mapping[str, Any], chars: int | None = None) -> int:
        """Tokens a request will cost: its prompt (`chars`, when the caller has them)
        at the calibrated ratio, plus its answer ceiling or the average answer so far."""
        if chars is None:
            chars = endpoint.prompt_chars(body)
        ceiling = endpoint.answer_ceiling(body)
        answer = self.answer_tokens if ceiling is None else ceiling
        return int(chars / self.chars_per_token + answer) + 1

    def split(self, endpoint: Endpoint, body: Mapping[str, Any], chars: int | None = None) -> tuple[int, int]:
        """`estimate` in its two parts, for limits that count them apart: (the prompt's
        tokens, the answer's: its ceiling, else the average answer so far)."""
        if chars is None:
            chars = endpoint.prompt_chars(body)
        ceiling = endpoint.answer_ceiling(body)
        answer = self.answer_tokens if ceiling is None else ceiling
        return int(chars / self.chars_per_token) + 1, int(answer)

    def observe(self, chars: int, prompt_tokens: int, completion_tokens: int) -> None:
        if prompt_tokens > 0 and chars > 0:
            self._seen_chars += chars
            self._seen_tokens += prompt_tokens
            self.chars_per_token = max(self._seen_chars / self._seen_tokens, 0.5)
        if completion_tokens > 0:
            self._answers += completion_tokens
            self._answered += 1
            self.answer_tokens = self._answers / self._answered
