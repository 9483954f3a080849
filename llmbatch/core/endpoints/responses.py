"""``/v1/responses``, the Responses API: ``input`` (a string or a list of items) and
``instructions`` in; output items out, whose ``output_text`` parts are the answer.

Its ceiling is ``max_output_tokens`` (reasoning included), its schema goes in
``text.format``, and its usage is ``input_tokens`` / ``output_tokens``, told as
prompt and completion. An answer cut short says ``status: incomplete`` with
``incomplete_details.reason``: its finish reason is ``incomplete: REASON`` (a
completed one's is ``stop``, chat's word, so ``--require-finish stop`` means the same
here), and ``incomplete: max_output_tokens`` is a truncation. A re-ask is stateless
(no ``previous_response_id``, which needs stored responses): the answer and the
validator's message are appended to ``input``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmbatch.core.attachments import Attachment
from llmbatch.core.endpoints.base import MESSAGE_FRAMING, Endpoint, reask_message, text_chars
from llmbatch.core.endpoints.chat import refusal_part
from llmbatch.core.usage import Usage

__all__ = ["RESPONSES", "Responses", "text_format_of"]

RESPONSES = "/v1/responses"
TRUNCATED = "incomplete: max_output_tokens"


def text_format_of(response_format: Mapping[str, Any]) -> dict[str, Any]:
    """The Responses API's ``text.format`` asking what chat's `response_format` asks:
    ``{"type": "json_schema", "json_schema": {"name", "schema", ...}}`` becomes
    ``{"type": "json_schema", "name", "schema", ...}`` (whatever else the json_schema
    holds, ``strict`` included, goes along)."""
    inner = response_format.get("json_schema")
    if response_format.get("type") == "json_schema" and isinstance(inner, dict):
        return {"type": "json_schema", **inner}
    return dict(response_format)


def _output_text(body: Mapping[str, Any]) -> str | None:
    """The output's ``output_text`` parts, joined; None when there is none."""
    output = body.get("output")
    if not isinstance(output, list):
        return None
    texts = []
    for item in output:
        if isinstance(item, dict) and item.get("type") == "message":
            content = item.get("content")
            if isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and part.get("type") == "output_text":
                        text = part.get("text")
                        if isinstance(text, str):
                            texts.append(text)
    return "".join(texts) if texts else None


class Responses(Endpoint):
    path = RESPONSES
    name = "responses"
    ceiling_keys = ("max_output_tokens",)
    max_tokens_key = "max_output_tokens"
    prompt_keys = ("input", "instructions")
    takes_attachments = True

    def from_text(self, text: str, system: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"input": text}
        if system:
            body["instructions"] = system
        return body

    def schema_params(self, response_format: dict[str, Any]) -> dict[str, Any]:
        return {"text": {"format": text_format_of(response_format)}}

    def attach(self, body: dict[str, Any], attachments: Sequence[Attachment]) -> dict[str, Any]:
        """``input`` becomes one user item whose content is the text (``input_text``),
        an ``input_image`` for each image and an ``input_file`` for each PDF (its file
        data, or its URL)."""
        parts: list[dict[str, Any]] = [{"type": "input_text", "text": body["input"]}]
        for a in attachments:
            if a.kind == "image":
                parts.append({"type": "input_image", "image_url": a.url, "detail": "auto"})
            elif a.inline:
                parts.append({"type": "input_file", "filename": a.filename, "file_data": a.url})
            else:
                parts.append({"type": "input_file", "file_url": a.url})
        return {**body, "input": [{"role": "user", "content": parts}]}

    def reask(self, body: Mapping[str, Any], answer: str | None, reason: str) -> dict[str, Any] | None:
        given = body.get("input")
        turns: list[Any] = (
            [{"role": "user", "content": given}] if isinstance(given, str) else list(given or [])
        )
        if answer is not None:
            turns.append({"role": "assistant", "content": answer})
        turns.append({"role": "user", "content": reask_message(reason)})
        return {**body, "input": turns}

    def text(self, body: Any) -> str | None:
        return _output_text(body) if isinstance(body, dict) else None

    def finish_reason(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return None
        status = body.get("status")
        if status == "completed":
            return "stop"
        if status == "incomplete":
            details = body.get("incomplete_details")
            why = details.get("reason") if isinstance(details, dict) else None
            return f"incomplete: {why or 'unknown'}"
        return status if isinstance(status, str) else None

    def truncated(self, body: Any) -> bool:
        return self.finish_reason(body) == TRUNCATED

    def refusal(self, body: Any) -> str | None:
        """A `refusal` content part of an output message."""
        output = body.get("output") if isinstance(body, dict) else None
        if not isinstance(output, list):
            return None
        for item in output:
            if isinstance(item, dict) and item.get("type") == "message":
                content = item.get("content")
                if isinstance(content, list) and (found := refusal_part(content)) is not None:
                    return found
        return None

    def usage(self, body: Mapping[str, Any]) -> Usage:
        return Usage.from_responses(body)

    def unusable(self, body: Any, require_finish: str | None) -> str | None:
        if not isinstance(body, dict):
            return "response body is not JSON"
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return f"response failed (error: {error['message']})"
        finish = self.finish_reason(body)
        if require_finish is not None and finish != require_finish:
            return f"finish_reason was {finish!r}, expected {require_finish!r}"
        if _output_text(body) is None:
            said = f" ({finish})" if finish not in (None, "stop") else ""
            return f"response has no output text{said}"
        return None

    def body_of(self, answer: Any, finish_reason: str | None) -> Any | None:
        if not isinstance(answer, str):
            return None
        body: dict[str, Any] = {"object": "response", "status": "completed"}
        if finish_reason and finish_reason.startswith("incomplete: "):
            body["status"] = "incomplete"
            body["incomplete_details"] = {"reason": finish_reason.removeprefix("incomplete: ")}
        part = {"type": "output_text", "text": answer}
        body["output"] = [{"type": "message", "role": "assistant", "content": [part]}]
        return body

    def prompt_chars(self, body: Mapping[str, Any]) -> int:
        n = text_chars(body.get("instructions"))
        given = body.get("input")
        if not isinstance(given, list):
            return n + text_chars(given)
        for item in given:
            if isinstance(item, str):
                n += len(item)
            elif isinstance(item, dict):
                n += text_chars(item.get("content")) + MESSAGE_FRAMING
        return n
