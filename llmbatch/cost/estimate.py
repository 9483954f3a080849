"""What a run will cost and how long it will take, before it spends anything: the
requests built as `run` builds them, their characters counted (no request is sent and
no tokenizer is downloaded), read through the one body reader
(:mod:`llmbatch.core.endpoints`) as the limits and the spending cap read them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from llmbatch.core.endpoints import DEFAULT_ANSWER_TOKENS, endpoint_of
from llmbatch.core.errors import InputError
from llmbatch.core.values import Request
from llmbatch.cost.prices import Price, cost

__all__ = ["Estimate", "estimate"]

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


def estimate(
    requests: Iterable[Request | InputError], *, answer_tokens: int = DEFAULT_ANSWER_TOKENS
) -> Estimate:
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
        endpoint = endpoint_of(req.url)
        if endpoint.free:  # moderations: counted as requests, billed nothing
            continue
        prompt += endpoint.prompt_tokens(body)
        ceiling = endpoint.answer_ceiling(body)
        if ceiling is None:
            answers += answer_tokens
            answers_max += answer_tokens * 4
        else:
            answers += min(ceiling, answer_tokens)
            answers_max += ceiling
    return Estimate(lines, n_requests, rejects, prompt, answers, answers_max, tuple(first), model)
