"""`EchoProvider`: an offline model for tests and examples, scripted in order.

    provider = EchoProvider()
    provider.set_responses([text_response("OK"), ErrorResponse(RuntimeError("boom"))])

Each request takes the next scripted item: a `Completion` (``text_response``) is
answered, an `ErrorResponse` raises its exception. With nothing (left) to take, the
provider echoes the request's last user message. Every request it was sent is kept in
`requests`, so a test can look at exactly what went out.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from llmbatch.core.errors import TransientError
from llmbatch.core.values import Completion, Request, Usage
from llmbatch.providers.script import count_tokens

__all__ = ["EchoProvider", "ErrorResponse", "ScriptedResponse", "text_response"]


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A scripted failure: the request that takes it raises `error`."""

    error: BaseException


ScriptedResponse = Completion | ErrorResponse | str


def text_response(
    text: str, *, model: str = "echo", finish_reason: str = "stop", prompt_tokens: int = 0
) -> Completion:
    """A chat completion whose answer (`Completion.text`) is `text`."""
    completion_tokens = count_tokens(text)
    body: dict[str, Any] = {
        "id": "chatcmpl-echo",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return Completion(body=body, usage=Usage(prompt_tokens, completion_tokens))


def _last_user_message(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
                content: str = m["content"]
                return content
    return ""


class EchoProvider:
    """A `Provider` that needs no network: scripted answers first, then echoes.

    `latency_ms` delays every answer (to make concurrency and timeouts observable).
    """

    def __init__(self, *, latency_ms: float = 0.0) -> None:
        self.latency = latency_ms / 1000
        self.requests: list[Request] = []
        self._script: deque[ScriptedResponse] = deque()

    def set_responses(self, responses: Iterable[ScriptedResponse]) -> None:
        """Replace the script: each request takes the next item (a plain `str` is
        shorthand for ``text_response(str)``)."""
        self._script = deque(responses)

    @property
    def call_count(self) -> int:
        return len(self.requests)

    async def complete(self, request: Request, *, timeout: float | None = None) -> Completion:
        self.requests.append(request)
        # Taken at call time, so the script is consumed in the order requests arrive.
        item = self._script.popleft() if self._script else None
        if self.latency:
            if timeout is not None and self.latency > timeout:
                await asyncio.sleep(timeout)
                raise TransientError(f"no answer within {timeout:g}s", code="timeout")
            await asyncio.sleep(self.latency)
        if isinstance(item, ErrorResponse):
            raise item.error
        if isinstance(item, Completion):
            return item
        model = str(request.body.get("model") or "echo")
        text = item if isinstance(item, str) else _last_user_message(request.body)
        return text_response(text, model=model)

    async def aclose(self) -> None:
        return None
