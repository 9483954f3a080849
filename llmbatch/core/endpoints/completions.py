"""``/v1/completions``, the legacy completions API base models are driven through:
``prompt`` in, ``choices[0].text`` out, usage as chat's. A re-ask appends the answer
and the validator's message to the prompt text, so the model reads what it wrote and
why it is refused, then answers again."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmbatch.core.endpoints.base import Endpoint, reask_message
from llmbatch.core.endpoints.chat import first_choice, unusable_choice

__all__ = ["COMPLETIONS", "Completions", "reask_suffix"]

COMPLETIONS = "/v1/completions"


def reask_suffix(answer: str | None, reason: str) -> str:
    """What a re-ask appends to a prompt: the answer as written, then a blank line, the
    validator's message, and a blank line for the model to go on from."""
    return f"{answer or ''}\n\n{reask_message(reason)}\n\n"


class Completions(Endpoint):
    path = COMPLETIONS
    name = "completions"
    ceiling_keys = ("max_tokens",)
    max_tokens_key = "max_tokens"
    prompt_keys = ("prompt",)
    bare_key = "prompt"

    def from_text(self, text: str, system: str | None) -> dict[str, Any]:
        # A base model has no system role: the system text leads the prompt.
        return {"prompt": f"{system}\n\n{text}" if system else text}

    def reask(self, body: Mapping[str, Any], answer: str | None, reason: str) -> dict[str, Any] | None:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return None  # several prompts, or tokens: asked again as they are
        return {**body, "prompt": prompt + reask_suffix(answer, reason)}

    def text(self, body: Any) -> str | None:
        c = first_choice(body)
        text = c.get("text") if c is not None else None
        return text if isinstance(text, str) else None

    def finish_reason(self, body: Any) -> str | None:
        c = first_choice(body)
        return c.get("finish_reason") if c is not None else None

    def truncated(self, body: Any) -> bool:
        return self.finish_reason(body) == "length"

    def unusable(self, body: Any, require_finish: str | None) -> str | None:
        return unusable_choice(body, require_finish)

    def body_of(self, answer: Any, finish_reason: str | None) -> Any | None:
        if not isinstance(answer, str):
            return None
        return {"object": "text_completion", "choices": [{"text": answer, "finish_reason": finish_reason}]}
