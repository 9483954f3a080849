"""``/v1/messages``, Anthropic's Messages API: ``messages`` and a top-level ``system`` in,
content blocks out, whose ``text`` blocks are the answer.

``max_tokens`` is required by the API (the builder fills a default where neither the
body nor ``--max-tokens`` gives one) and is the answer's ceiling. ``--schema`` is asked
for as Anthropic documents structured answers by tools: one tool whose ``input_schema``
is the schema, forced by ``tool_choice``; the answer is then that ``tool_use`` block's
``input`` (as JSON text, which the validators read), and a re-ask appends the answer
and a ``tool_result`` block carrying the validator's message, as the API requires
after a ``tool_use``. Without a tool, a re-ask appends the answer as an assistant turn
and the message as a user turn.

``stop_reason`` reads as chat's finish reasons, so ``--require-finish stop`` means the
same here: ``end_turn``, ``stop_sequence`` and ``tool_use`` are ``stop``, ``max_tokens``
is ``length`` (a truncation); ``refusal`` is a refusal. The usage is ``input_tokens``
(not counting the cache), ``cache_read_input_tokens``, ``cache_creation_input_tokens``
and ``output_tokens``: told as prompt tokens (all three inputs), of which cached (read)
and cache writes, and completion tokens.

``--attach`` puts each image in an ``image`` block and each PDF in a ``document`` block,
before the user turn's text (as Anthropic advises): a local file (or a ``data:`` URL) as
a base64 source with its media type, an http(s) URL as a url source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from llmbatch.core.attachments import Attachment, split_data_url
from llmbatch.core.endpoints.base import MESSAGE_FRAMING, Endpoint, reask_message, text_chars
from llmbatch.core.usage import Usage

__all__ = [
    "DEFAULT_MESSAGES_MAX_TOKENS",
    "MESSAGES",
    "SCHEMA_TOOL",
    "Messages",
    "attachment_block",
    "schema_tool",
]

MESSAGES = "/v1/messages"
# The answer ceiling a Messages request gets when neither its body nor --max-tokens
# gives one (the API refuses a request without max_tokens).
DEFAULT_MESSAGES_MAX_TOKENS = 1024
# The name of the tool --schema asks through, unless the schema names itself.
SCHEMA_TOOL = "answer"
_STOP = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "stop", "max_tokens": "length"}


def schema_tool(response_format: Mapping[str, Any]) -> dict[str, Any]:
    """The ``tools`` and ``tool_choice`` asking for chat's `response_format`'s schema:
    one tool (named as the schema is) whose input schema it is, forced."""
    spec = response_format.get("json_schema")
    spec = spec if isinstance(spec, dict) else {}
    name = str(spec.get("name") or SCHEMA_TOOL)
    schema = spec.get("schema") if isinstance(spec.get("schema"), dict) else {"type": "object"}
    tool = {"name": name, "description": "Give the answer through this tool.", "input_schema": schema}
    return {"tools": [tool], "tool_choice": {"type": "tool", "name": name}}


def attachment_block(a: Attachment) -> dict[str, Any]:
    """The content block carrying one attachment: ``image`` or ``document``."""
    split = split_data_url(a.url)
    if split is None:
        source: dict[str, Any] = {"type": "url", "url": a.url}
    else:
        source = {"type": "base64", "media_type": split[0], "data": split[1]}
    return {"type": "image" if a.kind == "image" else "document", "source": source}


def _blocks(body: Any) -> list[Any]:
    content = body.get("content") if isinstance(body, dict) else None
    return content if isinstance(content, list) else []


def _tool_use(body: Any) -> dict[str, Any] | None:
    for block in _blocks(body):
        if isinstance(block, dict) and block.get("type") == "tool_use":
            return block
    return None


def _text(body: Any) -> str | None:
    texts = [
        b["text"]
        for b in _blocks(body)
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    ]
    return "".join(texts) if texts else None


class Messages(Endpoint):
    path = MESSAGES
    name = "messages"
    ceiling_keys = ("max_tokens",)
    max_tokens_key = "max_tokens"
    prompt_keys = ("system", "messages")
    default_max_tokens = DEFAULT_MESSAGES_MAX_TOKENS
    takes_attachments = True
    no_text = "response has no text content"

    def from_text(self, text: str, system: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
        if system:
            body["system"] = system
        return body

    def missing(self, body: Mapping[str, Any]) -> str | None:
        return (
            None if isinstance(body.get("messages"), list) else 'messages request without a "messages" list'
        )

    def schema_params(self, response_format: dict[str, Any]) -> dict[str, Any]:
        return schema_tool(response_format)

    def attach(self, body: dict[str, Any], attachments: Sequence[Attachment]) -> dict[str, Any]:
        """The user turn's content becomes blocks: an ``image`` or ``document`` block for
        each attachment, then its text."""
        messages = [dict(m) for m in body["messages"]]
        user = messages[-1]
        text = user["content"]
        tail = [{"type": "text", "text": text}] if isinstance(text, str) else list(text)
        user["content"] = [*(attachment_block(a) for a in attachments), *tail]
        return {**body, "messages": messages}

    def reask_after(
        self, body: Mapping[str, Any], answer_body: Any, answer: str | None, reason: str
    ) -> dict[str, Any] | None:
        turns = list(body.get("messages") or [])
        message = reask_message(reason)
        used = _tool_use(answer_body)
        if used is not None:
            turns.append({"role": "assistant", "content": [used]})
            result = {
                "type": "tool_result",
                "tool_use_id": used.get("id"),
                "content": message,
                "is_error": True,
            }
            turns.append({"role": "user", "content": [result]})
        else:
            turns.append({"role": "assistant", "content": answer or "(no answer)"})
            turns.append({"role": "user", "content": message})
        return {**body, "messages": turns}

    def text(self, body: Any) -> str | None:
        used = _tool_use(body)
        if used is not None:
            return orjson.dumps(used.get("input")).decode()
        return _text(body)

    def finish_reason(self, body: Any) -> str | None:
        stop = body.get("stop_reason") if isinstance(body, dict) else None
        if not isinstance(stop, str):
            return None
        return _STOP.get(stop, stop)

    def truncated(self, body: Any) -> bool:
        return isinstance(body, dict) and body.get("stop_reason") == "max_tokens"

    def refusal(self, body: Any) -> str | None:
        if isinstance(body, dict) and body.get("stop_reason") == "refusal":
            return _text(body) or "refused"
        return None

    def usage(self, body: Mapping[str, Any]) -> Usage:
        return Usage.from_messages(body)

    def body_of(self, answer: Any, finish_reason: str | None) -> Any | None:
        if not isinstance(answer, str):
            return None
        stop = "max_tokens" if finish_reason == "length" else "end_turn"
        content = [{"type": "text", "text": answer}]
        return {"type": "message", "role": "assistant", "content": content, "stop_reason": stop}

    def prompt_chars(self, body: Mapping[str, Any]) -> int:
        n = text_chars(body.get("system"))
        messages = body.get("messages")
        if isinstance(messages, list):
            for m in messages:
                if isinstance(m, dict):
                    n += text_chars(m.get("content")) + MESSAGE_FRAMING
        return n
