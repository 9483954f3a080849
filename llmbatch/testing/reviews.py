"""The review schema the Anthropic tests and bench ask for: a sentiment and a 1-5 score,
small enough that the fake servers' scripted answers fit it."""

from __future__ import annotations

from typing import Any

REVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sentiment": {"enum": ["pos", "neg"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["sentiment", "score"],
}
