"""``/v1/moderations``: ``input`` in, a result per input out (``flagged``, the
``categories`` and their ``category_scores``). Free: no usage, no cost, no answer
ceiling; its answers are not text, so no validator reads them (llmbatch refuses
``--validate`` and ``--schema`` with it)."""

from __future__ import annotations

from typing import Any

from llmbatch.core.endpoints.base import Endpoint
from llmbatch.core.usage import Usage

__all__ = ["MODERATIONS", "Moderations"]

MODERATIONS = "/v1/moderations"


def _results(body: Any) -> list[dict[str, Any]] | None:
    results = body.get("results") if isinstance(body, dict) else None
    if isinstance(results, list) and results and all(isinstance(r, dict) for r in results):
        return results
    return None


class Moderations(Endpoint):
    path = MODERATIONS
    name = "moderations"
    prompt_keys = ("input",)
    answers = False
    free = True
    text_answers = False
    takes_validators = False

    def from_text(self, text: str, system: str | None) -> dict[str, Any]:
        return {"input": text}

    def usage(self, body: Any) -> Usage:
        return Usage()

    def unusable(self, body: Any, require_finish: str | None) -> str | None:
        if not isinstance(body, dict):
            return "response body is not JSON"
        if _results(body) is None:
            return "response has no moderation results"
        return None

    def answer(self, body: Any) -> Any:
        """The result list, one per input."""
        return _results(body)

    def columns(self, body: Any) -> dict[str, Any]:
        """``llm_flagged``: whether any input was flagged; ``llm_categories``: the
        categories flagged, in the order the provider lists them."""
        results = _results(body) or []
        flagged: dict[str, None] = {}
        for r in results:
            categories = r.get("categories")
            if isinstance(categories, dict):
                flagged.update((name, None) for name, on in categories.items() if on is True)
        return {
            "llm_flagged": any(r.get("flagged") is True for r in results),
            "llm_categories": list(flagged),
        }

    def body_of(self, answer: Any, finish_reason: str | None) -> Any | None:
        return {"results": answer} if isinstance(answer, list) else None
