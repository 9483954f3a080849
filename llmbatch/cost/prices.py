"""What tokens cost. Prices come from genai-prices (the price database Pydantic keeps;
its data ships with the package and is never updated at run time), overridable per
model in the config file and per run by flags. It knows cached-input prices and the
Batch API's; where it has no batch price, a batch costs half the list price.

Prices by service tier (``service_tier``, :mod:`llmbatch.core.tiers`): the database's
price for the tier where it has one (its ``service_tier`` price variants). Where it has
none, flex costs what the Batch API costs for an OpenAI model (OpenAI bills flex at Batch
API rates) and is unknown elsewhere; priority is unknown (it costs more than the list
price, by how much only a price says). ``default`` and ``auto`` are the list price.

A model we cannot price is *unknown*, never free: the display says "unknown" rather
than show $0.00. genai-prices takes about a third of a second to import, so it is
imported when a price is first needed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from llmbatch.core.tiers import FLEX, PRIORITY

__all__ = ["BATCH_DISCOUNT", "FAKE_FREE", "FAKE_MODEL", "Price", "Prices", "cost", "price_for", "table_price"]

# The Batch API's discount, where the database has no batch price of its own.
BATCH_DISCOUNT = 0.5
# Only a date or version stamp may follow a base name in the config's table: "o3-mini"
# is another model than "o3", and guessing its price from it would be wrong with
# confidence.
_VERSION_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens: prompt (`input`), completion (`output`), and prompt
    tokens read from the provider's cache (`cached_input`, when it bills them apart).
    `source` says where the price came from, for the summary."""

    input: float
    output: float
    cached_input: float | None = None
    source: str = ""
    # Prompt tokens written to the provider's cache (Anthropic bills them above the
    # input price); None: at the input price.
    cache_write: float | None = None
    # A flex run's default-tier price, for the requests it sent there after capacity
    # 429s (--flex-fallback): they are charged at it, reserved for and counted apart.
    fallback: Price | None = None
    # --escalate: each model an item may go on to, with its price (None: unknown).
    escalation: tuple[tuple[str, Price | None], ...] = ()
    # A Batch API run's price for what it sends live (--deadline, --then live): the
    # list price, where this one is the batch's.
    live: Price | None = None

    def for_model(self, model: str | None) -> Price | None:
        """The price of `model`'s tokens: an --escalate model's own, else this one."""
        for name, price in self.escalation:
            if name == model:
                return price
        return self

    def halved(self, why: str) -> Price:
        cached = None if self.cached_input is None else self.cached_input * BATCH_DISCOUNT
        write = None if self.cache_write is None else self.cache_write * BATCH_DISCOUNT
        return Price(
            self.input * BATCH_DISCOUNT,
            self.output * BATCH_DISCOUNT,
            cached,
            f"{self.source}, {why}",
            cache_write=write,
        )


def cost(
    price: Price | None,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
) -> float | None:
    """USD for the given tokens, or None when the price is unknown. `cached_tokens` are
    the part of the prompt tokens the provider read from its cache, `cache_write_tokens`
    the part it wrote to it."""
    if price is None:
        return None
    cached = min(cached_tokens, prompt_tokens) if price.cached_input is not None else 0
    written = min(cache_write_tokens, prompt_tokens - cached) if price.cache_write is not None else 0
    fresh = prompt_tokens - cached - written
    total = (
        fresh * price.input
        + cached * (price.cached_input or 0.0)
        + written * (price.cache_write or 0.0)
        + completion_tokens * price.output
    )
    return total / 1_000_000


def table_price(model: str, table: Mapping[str, Price]) -> Price | None:
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


@cache
def _database(model: str, base_url: str | None, batch: bool, tier: str | None = None) -> Price | None:
    """The price genai-prices has for `model` (at the provider of `base_url` when it
    knows the URL, else wherever the model is found) on `tier`, None when it has none
    (see the module docstring for tiers)."""
    import genai_prices
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    found: Any = None
    if base_url:
        try:
            found = snapshot.find_provider_model(model, None, None, base_url)
        except LookupError:
            found = None
    if found is None:
        try:
            found = snapshot.find_provider_model(model, None, None, None)
        except LookupError:
            return None
    provider, info = found
    now = dt.datetime.now(dt.UTC)
    standard = info.get_prices(now)
    source = f"genai-prices {genai_prices.__version__} ({provider.id}/{info.id})"
    price = _price(standard, source)
    if tier in (FLEX, PRIORITY) and not batch:
        if any(v.when == {"service_tier": tier} for v in info.price_variants or ()):
            tiered = info.get_prices(now, {"service_tier": tier})
            return _price(tiered, f"{source}, its {tier} price")
        if tier == PRIORITY or provider.id != "openai":
            return None
        batch = True  # flex is billed at the Batch API's rates
    if not batch:
        return price
    batched = info.get_prices(now, {"processing": "batch"})
    why = "flex at the Batch API's price: " if tier == FLEX else ""
    if batched == standard:
        return price.halved(f"{why}half for the Batch API")
    return _price(batched, f"{source}, {why}its Batch API price")


def _mtok(value: Any) -> float | None:
    """A genai-prices price per million tokens as a float: a tiered price (Claude's above
    200k prompt tokens) by its base, the price of every request llmbatch sends in bulk."""
    if value is None:
        return None
    return float(getattr(value, "base", value))


def _price(found: Any, source: str) -> Price:
    """Our `Price` of a genai-prices ModelPrice."""
    return Price(
        _mtok(found.input_mtok) or 0.0,
        _mtok(found.output_mtok) or 0.0,
        _mtok(found.cache_read_mtok),
        source,
        cache_write=_mtok(getattr(found, "cache_write_mtok", None)),
    )


def price_for(
    model: str | None,
    overrides: Mapping[str, Price] | None = None,
    *,
    price_in: float | None = None,
    price_out: float | None = None,
    base_url: str | None = None,
    batch: bool = False,
    tier: str | None = None,
) -> Price | None:
    """The price to charge `model`: flags win, then `overrides` (the config file's
    table), then genai-prices. Dated names resolve to their base entry. A single flag
    replaces one side of the looked-up price; when the model has no price, the side
    without a flag counts as zero (embeddings have no output tokens). Prices from the
    table and the database are batch prices when `batch`, and `tier`'s (the service
    tier: a table's price is the list price, halved for flex, and no priority price);
    flags are taken as given. Returns None when nothing prices the model."""
    found: Price | None = None
    if model:
        name = model.strip().lower()
        if overrides and tier != PRIORITY:
            found = table_price(
                name, {k.lower(): replace(v, source="the config file") for k, v in overrides.items()}
            )
            if found is not None and batch:
                found = found.halved("half for the Batch API")
            elif found is not None and tier == FLEX:
                found = found.halved("half for flex, billed at the Batch API's price")
        if found is None:
            found = _database(name, base_url, batch, tier)
    if price_in is None and price_out is None:
        return found
    base = found or Price(0.0, 0.0)
    return Price(
        input=base.input if price_in is None else price_in,
        output=base.output if price_out is None else price_out,
        cached_input=base.cached_input if price_in is None else None,
        cache_write=base.cache_write if price_in is None else None,
        source="--price-in/--price-out"
        + (f" and {base.source}" if found and None in (price_in, price_out) else ""),
    )


FAKE_MODEL = "fake"  # the model name the offline provider answers with when none was asked
FAKE_FREE = Price(0.0, 0.0, source="the offline fake model is free")


class Prices:
    """Each (model, batch) price looked up once, for readers of many output lines: the
    fake model is free unless a price flag is given, the flags win for every other."""

    def __init__(self, *, price_in: float | None = None, price_out: float | None = None) -> None:
        self.price_in, self.price_out = price_in, price_out
        self._known: dict[tuple[str, bool], Price | None] = {}

    def of(self, model: str | None, *, batch: bool) -> Price | None:
        key = (model or "", batch)
        if key not in self._known:
            offline = model == FAKE_MODEL and self.price_in is None and self.price_out is None
            self._known[key] = (
                FAKE_FREE
                if offline
                else price_for(model or None, price_in=self.price_in, price_out=self.price_out, batch=batch)
            )
        return self._known[key]
