"""What tokens cost. A small built-in table of list prices, overridable per model (config
file) or per run (flags). A model we cannot price is *unknown*, never free: the display
says "unknown" rather than show $0.00."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmbatch.settings import Settings

__all__ = ["PRICES", "PRICES_CHECKED", "Price", "cost", "price_for", "run_price"]


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens, prompt (`input`) and completion (`output`)."""

    input: float
    output: float


PRICES_CHECKED = "2025-06"

PRICES: Mapping[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-2024-05-13": Price(5.00, 15.00),  # the first gpt-4o snapshot kept its launch price
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "o3": Price(2.00, 8.00),
    "o4-mini": Price(1.10, 4.40),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "text-embedding-3-small": Price(0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.0),
}
"""OpenAI's public list prices as of `PRICES_CHECKED` (standard tier, no batch or cached-
input discount). Prices change: pass overrides or --price-in/--price-out for real bills."""

# Only a date or version stamp may follow a base name: "o3-mini" or "gpt-4o-audio-preview"
# are other models with other prices, and guessing them from "o3" or "gpt-4o" would be
# wrong with confidence.
_VERSION_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})")


def _lookup(model: str, table: Mapping[str, Price]) -> Price | None:
    """The entry for `model` or for its longest base name followed by a date stamp."""
    if model in table:
        return table[model]
    best: str | None = None
    for name in table:
        if (
            model.startswith(name)
            and _VERSION_SUFFIX.fullmatch(model[len(name) :])
            and (best is None or len(name) > len(best))
        ):
            best = name
    return table[best] if best is not None else None


def price_for(
    model: str | None,
    overrides: Mapping[str, Price] | None = None,
    *,
    price_in: float | None = None,
    price_out: float | None = None,
) -> Price | None:
    """The price to charge `model`: flags win, then `overrides`, then the built-in table.

    Dated names resolve to their base entry (`gpt-4o-mini-2024-07-18` -> `gpt-4o-mini`).
    A single flag replaces one side of the looked-up price; when the model has no price,
    the side without a flag counts as zero (embeddings have no output tokens).
    Returns None when nothing prices the model.
    """
    found: Price | None = None
    if model:
        name = model.strip().lower()
        if overrides:
            found = _lookup(name, {k.lower(): v for k, v in overrides.items()})
        if found is None:
            found = _lookup(name, PRICES)
    if price_in is None and price_out is None:
        return found
    base = found or Price(0.0, 0.0)
    return Price(
        input=base.input if price_in is None else price_in,
        output=base.output if price_out is None else price_out,
    )


def cost(price: Price | None, prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD for the given tokens, or None when the price is unknown."""
    if price is None:
        return None
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000


# The Batch API's discount on input and output tokens.
BATCH_DISCOUNT = 0.5


def run_price(settings: Settings, model: str | None = None) -> Price | None:
    """The price a run's settings charge for `model` (or --model): flags, then the
    config file's table, then the built-in one; with --batch-api, half of it. The offline
    fake model is free."""
    overrides = {m: Price(i, o) for m, (i, o) in settings.prices.items()}
    model = settings.model or model or ("fake" if settings.provider == "fake" else None)
    if settings.provider == "fake" and settings.price_in is None and settings.price_out is None:
        return price_for(model, overrides) or Price(0.0, 0.0)
    price = price_for(model, overrides, price_in=settings.price_in, price_out=settings.price_out)
    if price is not None and settings.batch_api:
        price = Price(price.input * BATCH_DISCOUNT, price.output * BATCH_DISCOUNT)
    return price
