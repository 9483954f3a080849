"""The spending cap (``--max-cost USD``): this run never spends more than it.

Before each attempt its worst case is reserved: the prompt's UTF-8 bytes (a token is at
least a byte, so an upper bound on its tokens) at the input price, plus the answer's
ceiling (``max_tokens`` / ``max_completion_tokens``) at the output price. An attempt is
sent only while what was spent plus what is reserved stays within the cap; its
reservation is then settled: by the answer's real cost, or given back when the server
did no work (a 429, a refused request, a failed connection), or kept whole when it may
have (a timeout, a cancel: the provider may bill it). So the spend, counted from the
server's usage, never passes the cap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from llmbatch.errors import ConfigError, InputError, ProviderError
from llmbatch.prices import Price, cost
from llmbatch.providers.base import Usage

__all__ = ["SpendingCap", "answer_ceiling"]


def answer_ceiling(body: Mapping[str, Any]) -> int | None:
    """The most completion tokens a request can be billed for; 0 for embeddings; None
    when nothing bounds it."""
    if "input" in body and "messages" not in body:
        return 0
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    return int(cap) if isinstance(cap, int | float) and cap > 0 else None


def prompt_bound(body: Mapping[str, Any]) -> int:
    """An upper bound on the prompt's tokens: the bytes of what carries it."""
    part = body.get("messages") if "messages" in body else body.get("input")
    return len(orjson.dumps(part)) if part is not None else 0


class SpendingCap:
    """What a run may still spend, in USD."""

    def __init__(self, cap: float, price: Price | None) -> None:
        if price is None:
            raise ConfigError(
                "--max-cost needs the model's price, and it has none: give --price-in and --price-out "
                "(USD per million tokens), or [prices.MODEL] in the config file"
            )
        self.cap = cap
        self.price = price
        self.spent = 0.0
        self.reserved = 0.0

    def worst_case(self, body: Mapping[str, Any], line: int = 0) -> float:
        ceiling = answer_ceiling(body)
        if ceiling is None:
            raise InputError(
                "no answer ceiling (max_tokens or max_completion_tokens) to reserve for under --max-cost: "
                "give --max-tokens N",
                line=line,
                kind="no_ceiling",
            )
        worst = cost(self.price, prompt_bound(body), ceiling)
        assert worst is not None
        return worst

    def check(self, body: Mapping[str, Any]) -> None:
        """Refuse, before anything is sent, requests that cannot be reserved for."""
        try:
            self.worst_case(body)
        except InputError as exc:
            raise ConfigError(f"{exc}; nothing was sent") from None

    def reserve(self, amount: float) -> bool:
        """Reserve `amount`; False (nothing reserved) when it would pass the cap."""
        if self.spent + self.reserved + amount > self.cap:
            return False
        self.reserved += amount
        return True

    def settle(self, amount: float, outcome: Usage | BaseException | None) -> None:
        """End a reservation: an answer costs its usage; a timeout or a cancel keeps the
        reservation (it may be billed); anything else that got no answer costs
        nothing."""
        self.reserved -= amount
        if isinstance(outcome, Usage):
            real = cost(self.price, outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens)
            self.spent += real or 0.0
        elif (
            outcome is None
            or getattr(outcome, "code", None) == "timeout"
            or not isinstance(outcome, ProviderError)
        ):
            self.spent += amount

    def reason(self) -> str:
        spent, flight = f"${self.spent:.4f}", f"${self.reserved:.4f}"
        return f"spending cap reached ({spent} spent and {flight} in flight, of ${self.cap:g})"
