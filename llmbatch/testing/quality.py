"""The fake server's per-model quality knob: a share of each model's answers that are
not valid (``FakeServer(quality={"small": 0.3, "large": 0.02})``, or ``--quality
small=0.3``), for trying ``--escalate``.

A spoiled answer is a 200 like any other, billed as the answer it replaces (its usage
is untouched), whose text is prose where JSON was asked: any JSON or schema validator
finds it invalid. Which answers are spoiled is drawn at random per answer (seeded), so a
re-ask on the same model may succeed: with a share ``p`` and ``--max-requests n`` an
item stays invalid on that model with a chance of ``p ** n``. Live answers and batch
lines are spoiled alike; the server counts the spoiled ones per model
(``ServerStats.by_model``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from llmbatch.core.endpoints import CHAT, COMPLETIONS, RESPONSES

__all__ = ["SPOILED_TEXT", "Quality", "parse_quality"]

SPOILED_TEXT = "Sure! Here is my answer, in my own words rather than the format you asked for."


class Quality:
    """Spoils a share of each named model's answers (see the module docstring)."""

    def __init__(self, shares: Mapping[str, float], *, seed: int = 0) -> None:
        for model, share in shares.items():
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"the share of invalid answers of {model} must be in [0, 1], not {share}")
        self.shares = dict(shares)
        self.rng = random.Random(seed)

    def spoil(self, path: str, body: dict[str, Any], payload: dict[str, Any]) -> bool:
        """Maybe spoil the answer `payload` to `body`, in place; True when it did."""
        share = self.shares.get(body.get("model"))  # type: ignore[arg-type]
        if not share or self.rng.random() >= share:
            return False
        if path == CHAT:
            message = payload["choices"][0]["message"]
            if message.get("content") is None:
                return False  # a refusal stays one
            message["content"] = SPOILED_TEXT
        elif path == COMPLETIONS:
            payload["choices"][0]["text"] = SPOILED_TEXT
        elif path == RESPONSES:
            parts = [
                part
                for item in payload.get("output", ())
                for part in item.get("content", ()) or ()
                if part.get("type") == "output_text"
            ]
            if not parts:
                return False
            for part in parts:
                part["text"] = SPOILED_TEXT
        else:
            return False  # embeddings and moderations have no text to spoil
        return True


def parse_quality(specs: list[str]) -> dict[str, float]:
    """``MODEL=SHARE`` strings (the server's ``--quality``) as a mapping."""
    out: dict[str, float] = {}
    for spec in specs:
        model, sep, share = spec.rpartition("=")
        if not sep or not model:
            raise ValueError(f"expected MODEL=SHARE, got {spec!r}")
        out[model] = float(share)
    return out
