"""``--escalate MODEL`` (repeatable, in order): try the cheap model first, then a
stronger one, for the items the cheap one cannot do.

An item whose answers stay invalid after its ``--max-requests`` on the first model is
asked on the next model of the list, with a fresh count: the n-th model's answers are
the item's answers from ``n * max_requests`` up to ``(n + 1) * max_requests``, so the
count of answers already on an item (a Batch API record's, a live follow-up's) says
which model it is on without another field. What the next model is sent is the item's
request as it stands with its ``model`` replaced (on the Responses API and completions
it carries the answers found invalid and why, which a stronger model may use); its
fingerprint stays the first request's, so a rerun with a changed list keeps the valid
answers of any model and redoes the invalid ones (``--redo invalid``) by the new list.

Escalation triggers on invalid answers only: a failure (retries spent, the request's
fault) is no reason to pay a dearer model; a refusal only with ``--reask-refusals``
(as a refusal is asked again only then). Each answer's usage is counted under the
model it was sent to, and each item under the model of its last answer
(`Stats.by_model`): the summary prices each model at its own price.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llmbatch.core.values import Finished

__all__ = ["UNKNOWN_MODEL", "Ladder", "model_of"]

# Under what name a request without a model is counted (a server's default model).
UNKNOWN_MODEL = "(default)"


@dataclass(frozen=True, slots=True)
class Ladder:
    """The models an item may go on to, in order, after the one it was asked first."""

    models: tuple[str, ...]

    def limit(self, rung: int, max_requests: int) -> int:
        """The item's answer count at which the model on `rung` has had its turn."""
        return max_requests * (rung + 1)

    def above(self, item: Finished) -> bool:
        """Whether a model is left above the one `item` is on."""
        return item.rung < len(self.models)

    def climb(self, item: Finished) -> None:
        """Put `item` on the next model (see `above`): its count goes on from here."""
        rung = item.rung
        request = item.request
        item.request = dataclasses.replace(request, body={**request.body, "model": self.models[rung]})
        item.rung = rung + 1


def model_of(item: Finished, default: str | None) -> str:
    """The model the item's request goes to."""
    model = item.request.body.get("model")
    return model if isinstance(model, str) and model else default or UNKNOWN_MODEL
