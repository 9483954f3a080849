"""Price lookup (genai-prices, the config file, flags) and cost arithmetic."""

from __future__ import annotations

import pytest

from llmbatch.cost.prices import Price, cost, price_for


def test_a_known_model_has_its_list_price_from_the_database() -> None:
    """gpt-4o-mini is priced by genai-prices: $0.15 in, $0.60 out, $0.075 cached in;
    the summary can say where the price came from."""
    price = price_for("gpt-4o-mini")
    assert price is not None
    assert (price.input, price.output, price.cached_input) == (0.15, 0.6, 0.075)
    assert price.source.startswith("genai-prices ")


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("GPT-4o-Mini", "gpt-4o-mini"),
    ],
)
def test_dated_names_resolve_to_their_base_model(model: str, base: str) -> None:
    """A dated snapshot name costs what its base model costs."""
    found, expected = price_for(model), price_for(base)
    assert found is not None and expected is not None
    assert (found.input, found.output) == (expected.input, expected.output)


def test_a_snapshot_with_its_own_price_keeps_it() -> None:
    """The first gpt-4o snapshot kept its launch price: $5 / $15."""
    price = price_for("gpt-4o-2024-05-13")
    assert price is not None and (price.input, price.output) == (5.0, 15.0)


def test_other_models_sharing_a_prefix_are_not_mispriced() -> None:
    """o3-mini is not o3: it has its own price, not its prefix's."""
    o3, mini = price_for("o3"), price_for("o3-mini")
    assert o3 is not None and mini is not None
    assert (mini.input, mini.output) != (o3.input, o3.output)


def test_unknown_or_missing_model_has_no_price() -> None:
    """A model nobody priced is unknown (None), never free."""
    assert price_for("llama-3.1-8b-instruct-my-finetune") is None
    assert price_for(None) is None
    assert cost(None, 1000, 1000) is None


def test_the_batch_api_has_its_own_price() -> None:
    """With the Batch API, gpt-4o-mini costs half: the database's batch price."""
    batch = price_for("gpt-4o-mini", batch=True)
    assert batch is not None and (batch.input, batch.output) == (0.075, 0.3)


def test_flags_beat_the_config_file_beat_the_database() -> None:
    """--price-in/--price-out win over the config file, which wins over genai-prices."""
    overrides = {"gpt-4o": Price(1.0, 2.0)}
    assert price_for("gpt-4o-2024-08-06", overrides) == Price(1.0, 2.0, source="the config file")
    flagged = price_for("gpt-4o", overrides, price_in=3.0, price_out=4.0)
    assert flagged is not None and (flagged.input, flagged.output) == (3.0, 4.0)
    one = price_for("gpt-4o", overrides, price_out=9.0)
    assert one is not None and (one.input, one.output) == (1.0, 9.0)
    halved = price_for("gpt-4o", overrides, batch=True)
    assert halved is not None and (halved.input, halved.output) == (0.5, 1.0)


def test_flags_price_a_model_nobody_knows() -> None:
    """Flags alone give an unknown model a price; an unflagged side counts as zero."""
    price = price_for("my-local-model", price_in=0.5, price_out=1.5)
    assert price is not None and (price.input, price.output) == (0.5, 1.5)
    embedder = price_for("my-embedder", price_in=0.02)
    assert embedder is not None and (embedder.input, embedder.output) == (0.02, 0.0)


def test_cost_is_tokens_times_price_per_million_with_cached_tokens_apart() -> None:
    """Cost is prompt and completion tokens times their prices; prompt tokens read from
    the cache cost the cached price."""
    assert cost(Price(2.5, 10.0), 1_000_000, 500_000) == pytest.approx(7.5)
    assert cost(Price(0.15, 0.60), 0, 0) == 0.0
    assert cost(Price(0.15, 0.6, 0.075), 1_000_000, 0, cached_tokens=500_000) == pytest.approx(0.1125)
    assert cost(Price(0.15, 0.6), 1_000_000, 0, cached_tokens=500_000) == pytest.approx(0.15)
