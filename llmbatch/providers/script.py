"""How the offline fake model answers: one set of rules for the in-process `fake`
provider and the loopback fake server, so a sample behaves the same on both.

A message may script its own answer with a line ``@fake {...}`` (JSON):

- ``answer``: the text to answer (an object is sent as its JSON);
- ``bad``: the first *k* answers are unusable prose (for re-ask tests);
- ``fail``: what the first attempts get instead of an answer, in order: an HTTP status
  (429, 500, ...) or ``"hang"``, ``"drop"``, ``"garbage"`` (a 200 that is not JSON),
  ``"nochoices"`` (a 200 chat completion with no choices);
- ``finish``: the answer's ``finish_reason`` (default ``stop``);
- ``refuse``: the model declines, with this text as ``message.refusal`` (and no
  content), on every answer, or on the first ``refusals`` answers (after the bad ones);
- ``latency_ms``: this request's latency;
- ``cached``: prompt tokens the answer reports as read from the provider's cache
  (``usage.prompt_tokens_details.cached_tokens``, at most the prompt's).

Without a script the model is still useful: a ``json_schema`` response format gets a
deterministic instance of the schema, a request that asks for JSON gets a small JSON
object, anything else gets an echo of the last user message.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Script", "Step", "answer_for", "chat_body", "embedding_body", "parse_script"]

DIRECTIVE = "@fake "
BAD_ANSWER = "Sorry, I am not sure how to answer that."


@dataclass(frozen=True, slots=True)
class Script:
    answer: str | None = None
    bad: int = 0
    fail: tuple[int | str, ...] = ()
    finish: str = "stop"
    latency_ms: float | None = None
    cached: int = 0
    refuse: str | None = None
    refusals: int | None = None  # how many answers refuse; None: every one

    @property
    def counted(self) -> bool:
        """Whether what an attempt gets depends on the answers given before it."""
        return bool(self.fail or self.bad or self.refusals)


@dataclass(frozen=True, slots=True)
class Step:
    """What attempt number *n* of a scripted request gets: a fault or an answer."""

    fault: int | str | None
    text: str
    finish: str
    cached: int = 0
    refusal: str | None = None  # the model declines: this is its message.refusal


def _contents(body: dict[str, Any]) -> list[str]:
    out: list[str] = []
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                out.append(c)
            elif isinstance(c, list):  # content parts
                out.extend(p["text"] for p in c if isinstance(p, dict) and isinstance(p.get("text"), str))
    inp = body.get("input")
    if isinstance(inp, str):
        out.append(inp)
    elif isinstance(inp, list):
        out.extend(x for x in inp if isinstance(x, str))
    return out


def parse_script(body: dict[str, Any]) -> Script:
    """The ``@fake`` directive found in the request's messages, or an empty script."""
    for text in _contents(body):
        at = text.find(DIRECTIVE)
        if at < 0:
            continue
        line = text[at + len(DIRECTIVE) :].split("\n", 1)[0]
        try:
            spec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(spec, dict):
            continue
        answer = spec.get("answer")
        if answer is not None and not isinstance(answer, str):
            answer = orjson.dumps(answer).decode()
        return Script(
            answer=answer,
            bad=int(spec.get("bad", 0)),
            fail=tuple(spec.get("fail", ())),
            finish=str(spec.get("finish", "stop")),
            latency_ms=float(spec["latency_ms"]) if "latency_ms" in spec else None,
            cached=int(spec.get("cached", 0)),
            refuse=str(spec["refuse"]) if spec.get("refuse") else None,
            refusals=int(spec["refusals"]) if "refusals" in spec else None,
        )
    return Script()


def step(script: Script, attempt: int, body: dict[str, Any]) -> Step:
    """The outcome of the attempt numbered *attempt* (0-based) for this request."""
    if attempt < len(script.fail):
        return Step(script.fail[attempt], "", "stop")
    answer = attempt - len(script.fail)
    if answer < script.bad:
        return Step(None, BAD_ANSWER, "stop")
    if script.refuse is not None and (script.refusals is None or answer - script.bad < script.refusals):
        return Step(None, "", "stop", refusal=script.refuse)
    text = script.answer if script.answer is not None else answer_for(body)
    return Step(None, text, script.finish, script.cached)


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _instance(schema: Any, seed: int, words: list[str], depth: int = 0) -> Any:
    """A small deterministic value that satisfies the common subset of JSON Schema."""
    if not isinstance(schema, dict) or depth > 6:
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][seed % len(schema["enum"])]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return _instance(schema[key][0], seed, words, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: _instance(v, seed >> (i % 16), words, depth + 1) for i, (k, v) in enumerate(props.items())}
    if kind == "array":
        n = max(int(schema.get("minItems", 1)), 1)
        return [_instance(schema.get("items", {}), seed + i, words, depth + 1) for i in range(n)]
    if kind == "integer":
        lo = int(schema.get("minimum", 0))
        hi = int(schema.get("maximum", lo + 9))
        return lo + seed % (hi - lo + 1)
    if kind == "number":
        low = float(schema.get("minimum", 0.0))
        high = float(schema.get("maximum", low + 1.0))
        return round(low + (seed % 1000) / 999 * (high - low), 3)
    if kind == "boolean":
        return bool(seed & 1)
    if kind == "null":
        return None
    return words[seed % len(words)] if words else "text"


def answer_for(body: dict[str, Any]) -> str:
    """The unscripted answer: schema instance, small JSON object, or an echo."""
    contents = _contents(body)
    last = contents[-1] if contents else ""
    seed = _digest(last)
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema", {})
            words = [w.lower() for w in re.findall(r"[A-Za-z]{5,}", last)]
            return orjson.dumps(_instance(schema, seed, words)).decode()
        if fmt.get("type") == "json_object":
            return orjson.dumps({"answer": last[:80]}).decode()
    if "json" in last.lower():
        return orjson.dumps({"answer": last[:80]}).decode()
    return "echo: " + last


def count_tokens(text: str) -> int:
    """The fake model's tokenizer: about four characters a token, like English."""
    return max(1, (len(text) + 3) // 4)


def chat_body(
    body: dict[str, Any],
    text: str,
    finish: str,
    request_id: str,
    *,
    cached: int = 0,
    refusal: str | None = None,
) -> dict[str, Any]:
    """A chat completion answering `text`. Like a real model, it stops at the request's
    `max_completion_tokens` / `max_tokens`: the answer is cut there, finish "length".
    `cached` prompt tokens are reported as read from the provider's cache. A `refusal`
    is answered as OpenAI does: ``message.refusal`` set, ``content`` null."""
    prompt = sum(count_tokens(c) + 4 for c in _contents(body))
    content: str | None = text
    if refusal is not None:
        content, completion = None, count_tokens(refusal)
    else:
        completion = count_tokens(text)
        ceiling = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(ceiling, int) and 0 < ceiling < completion:
            content, completion, finish = text[: ceiling * 4], ceiling, "length"
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": min(cached, prompt)}
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model") or "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": usage,
    }


def embedding_body(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body.get("input")
    texts = [inputs] if isinstance(inputs, str) else [str(x) for x in (inputs or [])]
    dims = int(body.get("dimensions") or 8)
    data = []
    for i, t in enumerate(texts):
        seed = _digest(t)
        vec = [((seed >> (j * 5)) % 2001 - 1000) / 1000 for j in range(dims)]
        data.append({"object": "embedding", "index": i, "embedding": vec})
    tokens = sum(count_tokens(t) for t in texts)
    return {
        "object": "list",
        "data": data,
        "model": body.get("model") or "fake-embedding",
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
