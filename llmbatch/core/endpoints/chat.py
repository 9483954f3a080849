"""``/v1/chat/completions``: messages in, the first choice's message out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmbatch.core.attachments import Attachment
from llmbatch.core.endpoints.base import MESSAGE_FRAMING, Endpoint, text_chars

__all__ = ["CHAT", "Chat", "choice_text", "first_choice", "refusal_part"]

CHAT = "/v1/chat/completions"


def first_choice(body: Any) -> dict[str, Any] | None:
    """The first choice of a chat (or completions) body, or None."""
    if isinstance(body, dict):
        choices = body.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            return choices[0]
    return None


def choice_text(choice: Mapping[str, Any]) -> str | None:
    """A choice's message content (or a completion's text), or None when there is none."""
    msg = choice.get("message")
    content = msg.get("content") if isinstance(msg, dict) else choice.get("text")
    return content if isinstance(content, str) else None


def refusal_part(parts: list[Any]) -> str | None:
    """The text of a `refusal` content part among `parts` (chat's content parts, a
    Responses output message's content), or None."""
    for part in parts:
        if isinstance(part, dict) and part.get("type") == "refusal":
            text = part.get("refusal")
            return text if isinstance(text, str) and text else "refused"
    return None


def unusable_choice(body: Any, finish: str | None) -> str | None:
    """Why a chat or completions body is no answer: not JSON, no choices, the wrong
    finish reason when one is required (`finish`), no text; None when it is one."""
    if not isinstance(body, dict):
        return "response body is not JSON"
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    if choice is None:
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return f"response has no choices (error: {error['message']})"
        return "response has no choices"
    if finish is not None and (got := choice.get("finish_reason")) != finish:
        return f"finish_reason was {got!r}, expected {finish!r}"
    if choice_text(choice) is None:
        return "response has no content"
    return None


class Chat(Endpoint):
    path = CHAT
    name = "chat"
    ceiling_keys = ("max_completion_tokens", "max_tokens")
    max_tokens_key = "max_tokens"
    prompt_keys = ("messages",)
    bare_key = "messages"
    takes_attachments = True

    def from_text(self, text: str, system: str | None) -> dict[str, Any]:
        messages = [{"role": "user", "content": text}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return {"messages": messages}

    def missing(self, body: Mapping[str, Any]) -> str | None:
        return None if isinstance(body.get("messages"), list) else 'chat request without a "messages" list'

    def schema_params(self, response_format: dict[str, Any]) -> dict[str, Any]:
        return {"response_format": response_format}

    def attach(self, body: dict[str, Any], attachments: Sequence[Attachment]) -> dict[str, Any]:
        """The user message's content becomes parts: its text, then an ``image_url`` for
        each image and a ``file`` (base64 file data) for each PDF."""
        parts: list[dict[str, Any]] = []
        for a in attachments:
            if a.kind == "image":
                parts.append({"type": "image_url", "image_url": {"url": a.url}})
            elif a.inline:
                parts.append({"type": "file", "file": {"filename": a.filename, "file_data": a.url}})
            else:
                raise ValueError(
                    f"--attach: {a.name}: chat completions take a PDF as file data, not a URL "
                    "(give a local path, or --endpoint /v1/responses)"
                )
        messages = [dict(m) for m in body["messages"]]
        user = messages[-1]
        user["content"] = [{"type": "text", "text": user["content"]}, *parts]
        return {**body, "messages": messages}

    # A re-ask is the same request again (what a chat run has always sent).

    def text(self, body: Any) -> str | None:
        # The hot path (every answer, read by the validators and the output): inline.
        if body.__class__ is dict:
            choices = body.get("choices")
            if choices.__class__ is list and choices and (c := choices[0]).__class__ is dict:
                msg = c.get("message")
                content = msg.get("content") if msg.__class__ is dict else c.get("text")
                return content if isinstance(content, str) else None
            return None
        c = first_choice(body)
        return None if c is None else choice_text(c)

    def finish_reason(self, body: Any) -> str | None:
        c = first_choice(body)
        return c.get("finish_reason") if c is not None else None

    def truncated(self, body: Any) -> bool:
        return self.finish_reason(body) == "length"

    def refusal(self, body: Any) -> str | None:
        """The first choice's `message.refusal`, or a `refusal` content part."""
        c = first_choice(body)
        msg = c.get("message") if c is not None else None
        if not isinstance(msg, dict):
            return None
        refusal = msg.get("refusal")
        if refusal:
            return refusal if isinstance(refusal, str) else str(refusal)
        content = msg.get("content")
        return refusal_part(content) if isinstance(content, list) else None

    def unusable(self, body: Any, require_finish: str | None) -> str | None:
        return unusable_choice(body, require_finish)

    def body_of(self, answer: Any, finish_reason: str | None) -> Any | None:
        if not isinstance(answer, str):
            return None
        choice = {"message": {"role": "assistant", "content": answer}, "finish_reason": finish_reason}
        return {"object": "chat.completion", "choices": [choice]}

    def prompt_chars(self, body: Mapping[str, Any]) -> int:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return 0
        n = 0
        for m in messages:
            if isinstance(m, dict):
                n += text_chars(m.get("content")) + MESSAGE_FRAMING
        return n
