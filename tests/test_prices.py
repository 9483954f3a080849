"""Price lookup and cost arithmetic."""

from __future__ import annotations

import pytest

from llmbatch.prices import PRICES, PRICES_CHECKED, Price, cost, price_for


def test_known_model_has_its_list_price() -> None:
    """A model in the table is priced from the table."""
    assert price_for("gpt-4o-mini") == Price(0.15, 0.60)
    assert price_for("gpt-4.1-nano") == PRICES["gpt-4.1-nano"]
    assert price_for("gpt-4o-2024-05-13") == Price(5.0, 15.0)  # an exact snapshot entry beats its base


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("GPT-4o-Mini", "gpt-4o-mini"),
    ],
)
def test_dated_names_resolve_to_their_base_model(model: str, base: str) -> None:
    """A dated snapshot name costs what its base model costs (longest base wins)."""
    assert price_for(model) == PRICES[base]


def test_other_models_sharing_a_prefix_are_not_guessed() -> None:
    """o3-mini is not o3 and gpt-4o-audio-preview is not gpt-4o: they are unknown, not mispriced."""
    assert price_for("o3-mini") is None
    assert price_for("gpt-4o-audio-preview") is None


def test_unknown_or_missing_model_has_no_price() -> None:
    """A model nobody priced is unknown (None), never free."""
    assert price_for("llama-3.1-8b-instruct") is None
    assert price_for(None) is None
    assert cost(None, 1000, 1000) is None


def test_flags_beat_overrides_beat_the_table() -> None:
    """--price-in/--price-out win over the config file, which wins over the built-in table."""
    overrides = {"gpt-4o": Price(1.0, 2.0)}
    assert price_for("gpt-4o-2024-08-06", overrides) == Price(1.0, 2.0)
    assert price_for("gpt-4o", overrides, price_in=3.0, price_out=4.0) == Price(3.0, 4.0)
    assert price_for("gpt-4o", overrides, price_out=9.0) == Price(1.0, 9.0)


def test_flags_price_a_model_the_table_does_not_know() -> None:
    """Flags alone give an unknown model a price; an unflagged side counts as zero."""
    assert price_for("my-local-model", price_in=0.5, price_out=1.5) == Price(0.5, 1.5)
    assert price_for("my-embedder", price_in=0.02) == Price(0.02, 0.0)


def test_cost_is_tokens_times_price_per_million() -> None:
    """Cost is prompt and completion tokens times their per-million prices."""
    assert cost(Price(2.5, 10.0), 1_000_000, 500_000) == pytest.approx(7.5)
    assert cost(Price(0.15, 0.60), 0, 0) == 0.0


def test_prices_record_when_they_were_checked() -> None:
    """The table says how old its prices are."""
    assert PRICES_CHECKED.startswith("2025-")
