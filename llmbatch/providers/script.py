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
  (``usage.prompt_tokens_details.cached_tokens``, at most the prompt's);
- ``written``: prompt tokens an Anthropic answer reports as written to its cache
  (``cache_creation_input_tokens``);
- ``reasoning``: completion tokens the answer reports as spent reasoning (added to
  them, as a reasoning model bills them);
- ``flag``: moderation categories to flag (a moderation request).

The script may sit in a chat message, a Responses ``input`` (a string or its items), a
completions ``prompt`` or a moderations ``input``. A re-ask that carries the
conversation (Responses, completions: see :mod:`llmbatch.core.endpoints`) keeps the
script where it was; the answers and re-ask messages it adds are not read for it.

Without a script the model is still useful: a ``json_schema`` response format (chat's
``response_format``, the Responses API's ``text.format``) gets a deterministic instance
of the schema, a request that asks for JSON gets a small JSON object, anything else gets
an echo of the last user message. The answer bodies of every endpoint are made in
:mod:`llmbatch.providers.answers`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from llmbatch.core.endpoints.base import REASK_MESSAGE

__all__ = [
    "Script",
    "Step",
    "answer_for",
    "asked_texts",
    "count_tokens",
    "digest",
    "forced_tool",
    "parse_script",
    "prompt_texts",
    "script_root",
]

DIRECTIVE = "@fake "
BAD_ANSWER = "Sorry, I am not sure how to answer that."
_REASK = REASK_MESSAGE.split("{", 1)[0]
_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Script:
    answer: str | None = None
    bad: int = 0
    fail: tuple[int | str, ...] = ()
    finish: str = "stop"
    latency_ms: float | None = None
    cached: int = 0
    reasoning: int = 0
    flag: tuple[str, ...] = ()
    refuse: str | None = None
    refusals: int | None = None  # how many answers refuse; None: every one
    written: int = 0  # prompt tokens written to the cache (Anthropic's cache_creation_input_tokens)

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
    reasoning: int = 0
    flag: tuple[str, ...] = ()
    refusal: str | None = None  # the model declines: this is its refusal
    written: int = 0


def _texts(value: Any, out: list[str], *, asked: bool) -> None:
    """The texts of a content value (a string, parts, or Responses input items) into
    `out`; with `asked`, leaving out what a re-ask added (answers, re-ask messages)."""
    if isinstance(value, str):
        if not (asked and value.startswith(_REASK)):
            out.append(value)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                _texts(item, out, asked=asked)
            elif isinstance(item, dict):
                if "content" in item:
                    if not (asked and item.get("role") == "assistant"):
                        _texts(item["content"], out, asked=asked)
                elif isinstance(item.get("text"), str):
                    _texts(item["text"], out, asked=asked)


def prompt_texts(body: dict[str, Any]) -> list[str]:
    """Every text of the request's prompt, in order (what its prompt tokens count)."""
    out: list[str] = []
    for key in ("instructions", "system", "messages", "input", "prompt"):
        if key in body:
            _texts(body[key], out, asked=False)
    return out


def asked_texts(body: dict[str, Any]) -> list[str]:
    """The texts the user asked, in order: the prompt without what re-asks added."""
    out: list[str] = []
    for key in ("messages", "input", "prompt"):
        if key in body:
            _texts(body[key], out, asked=True)
    return out


def _directive(text: str) -> tuple[dict[str, Any], int] | None:
    """The ``@fake`` object in `text` and where it ends, if there is one."""
    at = text.find(DIRECTIVE)
    if at < 0:
        return None
    start = at + len(DIRECTIVE)
    line = text[start:].split("\n", 1)[0]
    try:
        spec, end = _DECODER.raw_decode(line)  # a re-ask may append to the line
    except ValueError:
        return None
    return (spec, start + end) if isinstance(spec, dict) else None


def script_root(body: dict[str, Any]) -> str | None:
    """What a scripted request is known by across its re-asks: its prompt up to the end
    of its ``@fake`` object (a re-ask only adds after it); None without a script."""
    seen: list[str] = []
    for text in prompt_texts(body):
        found = _directive(text)
        if found is not None:
            return "\0".join([*seen, text[: found[1]]])
        seen.append(text)
    return None


def parse_script(body: dict[str, Any]) -> Script:
    """The ``@fake`` directive found in the request's prompt, or an empty script."""
    for text in prompt_texts(body):
        found = _directive(text)
        if found is None:
            continue
        spec = found[0]
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
            reasoning=int(spec.get("reasoning", 0)),
            flag=tuple(str(c) for c in spec.get("flag", ())),
            refuse=str(spec["refuse"]) if spec.get("refuse") else None,
            refusals=int(spec["refusals"]) if "refusals" in spec else None,
            written=int(spec.get("written", 0)),
        )
    return Script()


def step(script: Script, attempt: int, body: dict[str, Any]) -> Step:
    """The outcome of the attempt numbered *attempt* (0-based) for this request."""
    if attempt < len(script.fail):
        return Step(script.fail[attempt], "", "stop")
    answer = attempt - len(script.fail)
    if answer < script.bad:
        return Step(None, BAD_ANSWER, "stop", script.cached, script.reasoning)
    if script.refuse is not None and (script.refusals is None or answer - script.bad < script.refusals):
        return Step(None, "", "stop", script.cached, script.reasoning, refusal=script.refuse)
    text = script.answer if script.answer is not None else answer_for(body)
    return Step(
        None, text, script.finish, script.cached, script.reasoning, script.flag, written=script.written
    )


def digest(text: str) -> int:
    """A stable 64-bit number from a text: the fake model's seed."""
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
    contents = asked_texts(body)
    last = contents[-1] if contents else ""
    seed = digest(last)
    fmt = body.get("response_format")
    text = body.get("text")
    if fmt is None and isinstance(text, dict):  # the Responses API's text.format
        fmt = text.get("format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            fmt = {"type": "json_schema", "json_schema": fmt}
    if fmt is None and (tool := forced_tool(body)) is not None:  # Anthropic's --schema
        fmt = {"type": "json_schema", "json_schema": {"schema": tool.get("input_schema") or {}}}
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


def forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool a Messages request forces (``tool_choice: {"type": "tool", "name"}``), or None."""
    choice = body.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") != "tool":
        return None
    for tool in body.get("tools") or ():
        if isinstance(tool, dict) and tool.get("name") == choice.get("name"):
            return tool
    return None


def count_tokens(text: str) -> int:
    """The fake model's tokenizer: about four characters a token, like English."""
    return max(1, (len(text) + 3) // 4)
