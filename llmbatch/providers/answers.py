"""The fake model's answer bodies, one maker per endpoint, shaped as OpenAI's: a chat
completion, embeddings, a Responses API response, a text completion, moderation
results; and as Anthropic's: a Messages answer. The in-process `fake` provider, the
loopback server's live endpoints and its batches all answer through `answer_body`, so a
request gets the same answer each way.

Like a real model, an answer stops at the request's ceiling (``max_tokens``,
``max_completion_tokens``, ``max_output_tokens``, read by the endpoint as everything
else reads it): cut there, finish ``length`` (the Responses API: ``status:
incomplete``, reason ``max_output_tokens``). A scripted refusal is answered as OpenAI
does: chat's ``message.refusal`` set and ``content`` null; a Responses ``refusal`` part.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmbatch.core.attachments import attachment_parts, part_tokens
from llmbatch.core.endpoints import CHAT, COMPLETIONS, EMBEDDINGS, ENDPOINTS, MESSAGES, MODERATIONS, RESPONSES
from llmbatch.providers.script import Step, asked_texts, count_tokens, digest, forced_tool, prompt_texts

__all__ = [
    "MODERATION_CATEGORIES",
    "answer_body",
    "billed",
    "cached",
    "chat_body",
    "completion_body",
    "count_tokens",
    "embedding_body",
    "empty_body",
    "id_prefix",
    "moderation_body",
    "prompt_tokens",
    "responses_body",
]

MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
# Unscripted, the fake moderation model flags a category when one of its words is in
# the text.
_FLAG_WORDS = {"violence": ("kill", "attack"), "harassment": ("idiot", "stupid"), "hate": ("hate",)}


def prompt_tokens(url: str, body: dict[str, Any]) -> int:
    """The prompt tokens an answer to `body` reports (moderations: none)."""
    if url == MODERATIONS:
        return 0
    if url == EMBEDDINGS:
        return sum(count_tokens(t) for t in _inputs(body))
    attached = sum(
        part_tokens(p) or 0 for key in ("messages", "input") for p in attachment_parts(body.get(key))
    )
    return sum(count_tokens(c) + 4 for c in prompt_texts(body)) + attached  # images as OpenAI bills them


# What bounds each endpoint's answer, read as the limits and the cap read it.
_CEILING = {path: endpoint.answer_ceiling for path, endpoint in ENDPOINTS.items()}


def _cut(text: str, ceiling: Any, used: int) -> tuple[str, int, bool]:
    """The answer text within a ceiling of which `used` tokens are spent already
    (reasoning): the text, its tokens, whether it was cut."""
    tokens = count_tokens(text)
    if isinstance(ceiling, int) and not isinstance(ceiling, bool) and 0 < ceiling < tokens + used:
        room = max(ceiling - used, 0)
        return text[: room * 4], room, True
    return text, tokens, False


def _usage(prompt: int, completion: int, step: Step) -> dict[str, Any]:
    """Chat's usage (completions say it alike): the answer's tokens plus the step's
    reasoning, its cached prompt tokens when it has some."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion + step.reasoning,
        "total_tokens": prompt + completion + step.reasoning,
    }
    if step.cached:
        usage["prompt_tokens_details"] = {"cached_tokens": min(step.cached, prompt)}
    return usage


def chat_body(body: dict[str, Any], step: Step, request_id: str) -> dict[str, Any]:
    """A chat completion answering the step's text (or refusing, as the step says)."""
    prompt = prompt_tokens(CHAT, body)
    content: str | None
    if step.refusal is not None:
        content, completion, cut = None, count_tokens(step.refusal), False
    else:
        content, completion, cut = _cut(step.text, _CEILING[CHAT](body), step.reasoning)
    usage = _usage(prompt, completion, step)
    if step.reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": step.reasoning}
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model") or "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": step.refusal},
                "finish_reason": "length" if cut else step.finish,
                "logprobs": None,
            }
        ],
        "usage": usage,
    }


def completion_body(body: dict[str, Any], step: Step, request_id: str) -> dict[str, Any]:
    """A text completion (``/v1/completions``) answering the step's text."""
    prompt = prompt_tokens(COMPLETIONS, body)
    text, completion, cut = _cut(step.text, _CEILING[COMPLETIONS](body), step.reasoning)
    usage = _usage(prompt, completion, step)
    return {
        "id": request_id,
        "object": "text_completion",
        "created": 0,
        "model": body.get("model") or "fake",
        "choices": [
            {"text": text, "index": 0, "logprobs": None, "finish_reason": "length" if cut else step.finish}
        ],
        "usage": usage,
    }


def responses_body(body: dict[str, Any], step: Step, request_id: str) -> dict[str, Any]:
    """A Responses API response: a reasoning item when the step reasons, then the
    message whose ``output_text`` is the step's text."""
    prompt = prompt_tokens(RESPONSES, body)
    text, completion, cut = _cut(step.text, _CEILING[RESPONSES](body), step.reasoning)
    reason = "max_output_tokens" if cut or step.finish == "length" else None
    if step.finish == "content_filter":
        reason = "content_filter"
    output: list[dict[str, Any]] = []
    if step.reasoning:
        output.append({"id": f"rs_{request_id}", "type": "reasoning", "summary": []})
    part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
    if step.refusal is not None:
        part = {"type": "refusal", "refusal": step.refusal}
        completion = count_tokens(step.refusal)
    status = "incomplete" if reason else "completed"
    output.append(
        {
            "id": f"msg_{request_id}",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [part],
        }
    )
    return {
        "id": request_id,
        "object": "response",
        "created_at": 0,
        "status": status,
        "incomplete_details": {"reason": reason} if reason else None,
        "error": None,
        "model": body.get("model") or "fake",
        "output": output,
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": min(step.cached, prompt)},
            "output_tokens": completion + step.reasoning,
            "output_tokens_details": {"reasoning_tokens": step.reasoning},
            "total_tokens": prompt + completion + step.reasoning,
        },
    }


def messages_body(body: dict[str, Any], step: Step, request_id: str) -> dict[str, Any]:
    """An Anthropic Messages answer: a ``tool_use`` block when the request forces a tool
    (``--schema``) and the step's text is a JSON object, else a ``text`` block; cut at
    ``max_tokens`` as the API cuts (``stop_reason: max_tokens``); a refusal's
    ``stop_reason`` is ``refusal``. Its usage parts the prompt into what the cache read
    (the step's ``cached``), wrote (``written``) and the rest."""
    prompt = prompt_tokens(MESSAGES, body)
    tool = forced_tool(body)
    content: list[dict[str, Any]]
    if step.refusal is not None:
        stop, completion = "refusal", count_tokens(step.refusal)
        content = [{"type": "text", "text": step.refusal}]
    else:
        text, completion, cut = _cut(step.text, _CEILING[MESSAGES](body), 0)
        stop = "max_tokens" if cut or step.finish == "length" else "end_turn"
        content = [{"type": "text", "text": text}]
        given = _json_object(text) if tool is not None and not cut else None
        if given is not None and tool is not None:
            stop = "tool_use"
            content = [
                {"type": "tool_use", "id": f"toolu_{request_id}", "name": tool["name"], "input": given}
            ]
    read = min(step.cached, prompt)
    written = min(step.written, prompt - read)
    return {
        "id": request_id,
        "type": "message",
        "role": "assistant",
        "model": body.get("model") or "fake",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": prompt - read - written,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
            "output_tokens": completion,
        },
    }


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _inputs(body: dict[str, Any]) -> list[str]:
    inputs = body.get("input")
    if isinstance(inputs, str):
        return [inputs]
    if isinstance(inputs, list):
        return [x.get("text", "") if isinstance(x, dict) else str(x) for x in inputs]
    return []


def moderation_body(body: dict[str, Any], step: Step, request_id: str) -> dict[str, Any]:
    """Moderation results, one per input: the step's ``flag`` categories flagged (or,
    unscripted, those whose words the text holds), with scores to match."""
    results = []
    for text in asked_texts(body) or _inputs(body):
        lowered = text.lower()
        flagged = set(step.flag) or {
            name for name, words in _FLAG_WORDS.items() if any(w in lowered for w in words)
        }
        seed = digest(text)
        categories = {c: c in flagged for c in MODERATION_CATEGORIES}
        scores = {
            c: 0.9 + (seed >> i) % 100 / 1000 if c in flagged else (seed >> i) % 100 / 10_000
            for i, c in enumerate(MODERATION_CATEGORIES)
        }
        results.append(
            {
                "flagged": bool(flagged),
                "categories": categories,
                "category_scores": scores,
                "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
            }
        )
    return {"id": request_id, "model": body.get("model") or "omni-moderation-latest", "results": results}


def embedding_body(body: dict[str, Any], step: Step | None = None, request_id: str = "") -> dict[str, Any]:
    texts = _inputs(body)
    dims = int(body.get("dimensions") or 8)
    data = []
    for i, t in enumerate(texts):
        seed = digest(t)
        vec = [((seed >> (j * 5)) % 2001 - 1000) / 1000 for j in range(dims)]
        data.append({"object": "embedding", "index": i, "embedding": vec})
    tokens = sum(count_tokens(t) for t in texts)
    return {
        "object": "list",
        "data": data,
        "model": body.get("model") or "fake-embedding",
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


_MAKERS = {
    CHAT: chat_body,
    EMBEDDINGS: embedding_body,
    RESPONSES: responses_body,
    COMPLETIONS: completion_body,
    MODERATIONS: moderation_body,
    MESSAGES: messages_body,
}


_ID_PREFIXES = {
    CHAT: "chatcmpl-",
    RESPONSES: "resp_",
    COMPLETIONS: "cmpl-",
    MODERATIONS: "modr-",
    MESSAGES: "msg_",
}


def id_prefix(url: str) -> str:
    """How the endpoint's answer ids begin ("chatcmpl-", "resp_", ...; embeddings have none)."""
    return _ID_PREFIXES.get(url, "")


def answer_body(url: str, body: dict[str, Any], step: Step, request_id: str) -> dict[str, Any]:
    """The answer of the endpoint at `url` (chat for one it does not know)."""
    return _MAKERS.get(url, chat_body)(body, step, request_id)


def empty_body(url: str) -> dict[str, Any]:
    """A 200 that holds no answer (the ``nochoices`` fault) in the endpoint's shape."""
    if url == RESPONSES:
        return {"id": "resp_empty", "object": "response", "status": "completed", "output": []}
    if url == MODERATIONS:
        return {"id": "modr-empty", "results": []}
    if url == EMBEDDINGS:
        return {"object": "list", "data": []}
    if url == MESSAGES:
        return {
            "id": "msg_empty",
            "type": "message",
            "role": "assistant",
            "content": [],
            "stop_reason": "end_turn",
        }
    return {
        "id": "x",
        "object": "text_completion" if url == COMPLETIONS else "chat.completion",
        "choices": [],
    }


def cached(payload: dict[str, Any]) -> int:
    """The cached prompt tokens an answer body reports (chat's, completions' or the
    Responses API's usage; none: 0)."""
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return 0
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    return int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0


def billed(payload: dict[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens an answer body reports, whichever names it uses."""
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return 0, 0
    if "input_tokens" in usage:
        prompt = int(usage["input_tokens"]) + int(usage.get("cache_read_input_tokens") or 0)
        prompt += int(usage.get("cache_creation_input_tokens") or 0)
        return prompt, int(usage.get("output_tokens") or 0)
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
