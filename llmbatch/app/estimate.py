"""`llmbatch estimate`: the input read as `run` reads it (setup mistakes refused alike),
every request built and counted, and the price looked up."""

from __future__ import annotations

from llmbatch.app.settings import Settings
from llmbatch.app.wiring import run_price, source_for
from llmbatch.core.endpoints import DEFAULT_ANSWER_TOKENS
from llmbatch.cost.estimate import Estimate, estimate
from llmbatch.cost.prices import Price

__all__ = ["estimate_input"]


def estimate_input(
    settings: Settings, *, answer_tokens: int = DEFAULT_ANSWER_TOKENS
) -> tuple[Estimate, Price | None]:
    """The estimate for a run with these settings, and the price it is costed at. The
    input is checked as `run` checks it: a setup mistake is a ConfigError."""
    source = source_for(settings)
    source.check()
    try:
        source.preflight()
        est = estimate(source.requests(), answer_tokens=answer_tokens)
    finally:
        source.close()
    return est, run_price(settings, est.model)
