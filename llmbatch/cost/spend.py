"""The spending cap (``--max-cost USD``): this run never spends more than it.

Before each attempt its worst case is reserved: the prompt's UTF-8 bytes (a token is at
least a byte, so an upper bound on its tokens) at the input price, plus the answer's
ceiling (``max_tokens`` / ``max_completion_tokens``) at the output price. An attempt is
sent only while what was spent plus what is reserved stays within the cap; its
reservation is then settled: by the answer's real cost, or given back when the server
did no work (a 429, a refused request, a failed connection), or kept whole when it may
have (a timeout, a cancel: the provider may bill it). So the spend, counted from the
server's usage, never passes the cap.

A request for an ``--escalate`` model is reserved and charged at that model's price
(`Price.escalation`); the cap needs each of those prices.

A request a flex run sends on the default tier after its capacity 429s
(``--flex-fallback``) is reserved and charged at the default tier's price
(`Price.fallback`), when the price has one.
"""

from __future__ import annotations

from llmbatch.core.endpoints import endpoint_of
from llmbatch.core.errors import ConfigError, InputError, ProviderError
from llmbatch.core.tiers import DEFAULT_TIER, tier_of
from llmbatch.core.values import Request, Usage
from llmbatch.cost.prices import Price, cost

__all__ = ["SpendingCap"]


class SpendingCap:
    """What a run may still spend, in USD."""

    def __init__(
        self,
        cap: float,
        price: Price | None,
        *,
        tier: str | None = None,
    ) -> None:
        if price is None:
            on = f" on the {tier} tier" if tier not in (None, "default", "auto") else ""
            raise ConfigError(
                f"--max-cost needs the model's price{on}, and it has none, so the cap could not be "
                "honoured: give --price-in and --price-out (USD per million tokens)"
                + (", or [prices.MODEL] in the config file" if not on else "")
            )
        unknown = [model for model, known in price.escalation if known is None]
        if unknown:
            raise ConfigError(
                f"--max-cost needs the price of --escalate {unknown[0]}, and it has none: give its "
                "[prices.MODEL] in the config file"
            )
        self.cap = cap
        self.price = price
        self.spent = 0.0
        self.reserved = 0.0

    def price_of(self, request: Request | None) -> Price:
        """The price `request` is charged at: the default tier's for one a flex run sent
        there (when known), else the run's."""
        price = self.price
        if price.escalation and request is not None:
            found = price.for_model(request.body.get("model"))
            assert found is not None  # checked when the cap was made
            return found
        fallback = price.fallback
        if fallback is not None and request is not None and tier_of(request.body) == DEFAULT_TIER:
            return fallback
        return price

    def worst_case(self, request: Request) -> float:
        """USD the request can cost at most; an InputError (a reject) when nothing
        bounds its answer."""
        endpoint = endpoint_of(request.url)
        if endpoint.free:  # moderations: billed nothing
            return 0.0
        ceiling = endpoint.answer_ceiling(request.body)
        if ceiling is None:
            keys = " or ".join(endpoint.ceiling_keys)
            raise InputError(
                f"no answer ceiling ({keys}) to reserve for under --max-cost: give --max-tokens N",
                line=request.line,
                kind="no_ceiling",
            )
        worst = cost(self.price_of(request), endpoint.prompt_bound(request.body), ceiling)
        assert worst is not None
        return worst

    def check(self, request: Request) -> None:
        """Refuse, before anything is sent, requests that cannot be reserved for."""
        try:
            self.worst_case(request)
        except InputError as exc:
            raise ConfigError(f"{exc}; nothing was sent") from None

    def reserve(self, amount: float) -> bool:
        """Reserve `amount`; False (nothing reserved) when it would pass the cap."""
        if self.spent + self.reserved + amount > self.cap:
            return False
        self.reserved += amount
        return True

    def settle(
        self, amount: float, outcome: Usage | BaseException | None, request: Request | None = None
    ) -> None:
        """End a reservation: an answer costs its usage (at the price of `request`'s
        tier); a timeout or a cancel keeps the reservation (it may be billed); anything
        else that got no answer costs nothing."""
        self.reserved -= amount
        if isinstance(outcome, Usage):
            price = self.price_of(request)
            real = cost(
                price,
                outcome.prompt_tokens,
                outcome.completion_tokens,
                outcome.cached_tokens,
                outcome.cache_write_tokens,
            )
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
