"""``/v1/embeddings``: input in, vectors out; billed for the input only."""

from __future__ import annotations

from typing import Any

from llmbatch.core.endpoints.base import Endpoint

__all__ = ["EMBEDDINGS", "Embeddings"]

EMBEDDINGS = "/v1/embeddings"


class Embeddings(Endpoint):
    path = EMBEDDINGS
    name = "embeddings"
    prompt_keys = ("input",)
    answers = False
    bare_key = "input"
    text_answers = False

    @property
    def line_max_tokens_key(self) -> str | None:
        # An embeddings line of a mixed file has always been sent --max-tokens as
        # max_tokens; leaving it out now would make every such output stale.
        return "max_tokens"

    def from_text(self, text: str, system: str | None) -> dict[str, Any]:
        return {"input": text}

    def schema_params(self, response_format: dict[str, Any]) -> dict[str, Any]:
        # Sent as it always was (embeddings ignore it); changing it would make every
        # earlier embeddings output made with --schema stale.
        return {"response_format": response_format}

    def unusable(self, body: Any, require_finish: str | None) -> str | None:
        if not isinstance(body, dict):
            return "response body is not JSON"
        data = body.get("data")
        if not isinstance(data, list) or not data:
            return "response has no embeddings"
        for entry in data:
            # A str is a base64 embedding (encoding_format="base64").
            if not isinstance(entry, dict) or not isinstance(entry.get("embedding"), list | str):
                return "response has an entry without an embedding"
        return None

    def answer(self, body: Any) -> Any:
        """The vector (one input) or the vectors (several)."""
        if isinstance(body, dict) and isinstance(body.get("data"), list):
            vectors = [d.get("embedding") for d in body["data"] if isinstance(d, dict)]
            return vectors[0] if len(vectors) == 1 else vectors
        return None

    def body_of(self, answer: Any, finish_reason: str | None) -> Any | None:
        if not isinstance(answer, list):
            return None
        vectors = answer if answer and isinstance(answer[0], list) else [answer]
        return {"object": "list", "data": [{"embedding": v} for v in vectors]}
