"""`llmbatch estimate`: what a run will cost and how long it will take, before it
spends anything. Reads the input once, builds every request as `run` would, and counts
characters; no request is sent and no tokenizer is downloaded. Setup mistakes are
refused as `run` refuses them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from llmbatch.errors import InputError
from llmbatch.prices import Price, cost, run_price
from llmbatch.providers.base import Request
from llmbatch.requests import builder_for
from llmbatch.settings import Settings
from llmbatch.source import Source
from llmbatch.tokens import DEFAULT_ANSWER_TOKENS, TokenEstimator

__all__ = ["Estimate", "estimate", "estimate_input"]

# Characters per token varies with language and content; English prose is ~4. The
# range printed is this much either side of the estimate.
PROMPT_UNCERTAINTY = 0.25


@dataclass(frozen=True, slots=True)
class Estimate:
    lines: int
    requests: int
    rejects: int
    prompt_tokens: int
    answer_tokens: int  # expected
    answer_tokens_max: int  # if every answer ran to its max_tokens (or 4x expected)
    first_rejects: tuple[str, ...]
    model: str | None = None  # the first request's model, for the price

    def cost_range(self, price: Price | None) -> tuple[float, float] | None:
        low = cost(price, int(self.prompt_tokens * (1 - PROMPT_UNCERTAINTY)), self.answer_tokens // 2)
        high = cost(price, int(self.prompt_tokens * (1 + PROMPT_UNCERTAINTY)), self.answer_tokens_max)
        if low is None or high is None:
            return None
        return low, high

    def minutes(self, *, rpm: float | None, tpm: float | None) -> float | None:
        """Minutes at the given limits, if any limit is given."""
        bounds = []
        if rpm:
            bounds.append(self.requests / rpm)
        if tpm:
            bounds.append((self.prompt_tokens + self.answer_tokens) / tpm)
        return max(bounds) if bounds else None

    def as_dict(self, price: Price | None, *, rpm: float | None, tpm: float | None) -> dict[str, Any]:
        rng = self.cost_range(price)
        return {
            "lines": self.lines,
            "requests": self.requests,
            "rejects": self.rejects,
            "prompt_tokens": self.prompt_tokens,
            "answer_tokens_expected": self.answer_tokens,
            "answer_tokens_max": self.answer_tokens_max,
            "cost_usd_low": None if rng is None else round(rng[0], 4),
            "cost_usd_high": None if rng is None else round(rng[1], 4),
            "minutes_at_limits": self.minutes(rpm=rpm, tpm=tpm),
        }


def estimate_input(
    settings: Settings, *, answer_tokens: int = DEFAULT_ANSWER_TOKENS
) -> tuple[Estimate, Price | None]:
    """The estimate for a run with these settings, and the price it is costed at. The
    input is checked as `run` checks it: a setup mistake is a ConfigError."""
    source = Source(settings.input, builder_for(settings), number_duplicates=settings.number_duplicates)
    source.check()
    try:
        source.preflight()
        est = estimate(source.requests(), answer_tokens=answer_tokens)
    finally:
        source.close()
    return est, run_price(settings, est.model)


def estimate(
    requests: Iterable[Request | InputError], *, answer_tokens: int = DEFAULT_ANSWER_TOKENS
) -> Estimate:
    est = TokenEstimator()
    lines = n_requests = rejects = 0
    prompt = answers = answers_max = 0
    first: list[str] = []
    model: str | None = None
    for req in requests:
        lines += 1
        if isinstance(req, InputError):
            rejects += 1
            if len(first) < 5:
                first.append(f"line {req.line}: {req}")
            continue
        n_requests += 1
        body = req.body
        if model is None and isinstance(body.get("model"), str):
            model = body["model"]
        prompt += est.prompt_tokens(body)
        if "messages" not in body:
            continue  # embeddings: no answer tokens
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(cap, int) and cap > 0:
            answers += min(cap, answer_tokens)
            answers_max += cap
        else:
            answers += answer_tokens
            answers_max += answer_tokens * 4
    return Estimate(lines, n_requests, rejects, prompt, answers, answers_max, tuple(first), model)
