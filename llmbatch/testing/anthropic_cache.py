"""The fake Anthropic API's prompt cache: a request's prefix up to a ``cache_control``
breakpoint (tools, system, then messages, in order; the model too) seen before is read
from the cache (``cache_read_input_tokens``), one not seen is written
(``cache_creation_input_tokens``) and held from the request's arrival; the tokens after
the last breakpoint are ``input_tokens``. Tokens are counted as the fake model counts
them, over the text the model reads: adjacent text blocks of a message (or of the
system) are one text (`readable`), so a prefix split off a user message costs and
answers the same as the whole message.

A model of it, not a copy: a breakpoint whose prefix holds fewer than `min_tokens`
(1,024, as most of Anthropic's models) is not cached; there is no look-back for hits
short of a breakpoint, no expiry, and one cache for the whole server.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from llmbatch.core.endpoints import MESSAGES
from llmbatch.providers.answers import prompt_tokens

__all__ = ["AnthropicPromptCache", "readable"]

_MARK = "cache_control"


def _joined(content: Any) -> Any:
    """A content value with adjacent text blocks made one (a lone text: a string), its
    cache_control marks dropped."""
    if not isinstance(content, list):
        return content
    out: list[Any] = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            if out and isinstance(out[-1], dict) and out[-1].get("type") == "text":
                out[-1] = {"type": "text", "text": out[-1]["text"] + block["text"]}
                continue
            block = {"type": "text", "text": block["text"]}
        elif isinstance(block, dict) and _MARK in block:
            block = {k: v for k, v in block.items() if k != _MARK}
        out.append(block)
    if len(out) == 1 and isinstance(out[0], dict) and out[0].get("type") == "text":
        return out[0]["text"]
    return out


def readable(body: dict[str, Any]) -> dict[str, Any]:
    """`body` as the model reads it: its system and each message's text in one piece."""
    out = dict(body)
    if "system" in body:
        out["system"] = _joined(body["system"])
    messages = body.get("messages")
    if isinstance(messages, list):
        out["messages"] = [
            {**m, "content": _joined(m.get("content"))} if isinstance(m, dict) else m for m in messages
        ]
    return out


def _blocks(body: dict[str, Any]) -> list[tuple[str, int, Any]]:
    """The cacheable blocks in order: (where, message index, block)."""
    out: list[tuple[str, int, Any]] = [("tools", -1, t) for t in body.get("tools") or ()]
    system = body.get("system")
    if isinstance(system, list):
        out += [("system", -1, b) for b in system]
    elif system:
        out.append(("system", -1, {"type": "text", "text": system}))
    for at, m in enumerate(body.get("messages") or ()):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            out += [("messages", at, b) for b in content]
        else:
            out.append(("messages", at, {"type": "text", "text": content}))
    return out


def _prefix_body(body: dict[str, Any], blocks: list[tuple[str, int, Any]]) -> dict[str, Any]:
    """A body holding only `blocks` (the prefix up to a breakpoint)."""
    system = [b for where, _, b in blocks if where == "system"]
    messages: list[dict[str, Any]] = []
    for where, at, block in blocks:
        if where != "messages":
            continue
        if not messages or messages[-1]["at"] != at:
            role = body["messages"][at].get("role", "user")
            messages.append({"at": at, "role": role, "content": []})
        messages[-1]["content"].append(block)
    return {
        "system": system,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
    }


class AnthropicPromptCache:
    """Prefixes seen, by a digest of the model and their blocks (see the module docstring)."""

    def __init__(self, *, min_tokens: int = 1024) -> None:
        self.min_tokens = min_tokens
        self.held: set[bytes] = set()
        self.reads = 0  # answers that read from the cache
        self.writes = 0  # answers that wrote to it

    def serve(self, body: dict[str, Any]) -> tuple[int, int]:
        """The tokens `body`'s answer reads from the cache and writes to it."""
        blocks = _blocks(body)
        digest = hashlib.blake2b(str(body.get("model")).encode(), digest_size=16)
        read = last = 0
        for n, (where, _, block) in enumerate(blocks, 1):
            clean = {k: v for k, v in block.items() if k != _MARK} if isinstance(block, dict) else block
            digest.update(where.encode() + orjson.dumps(clean, option=orjson.OPT_SORT_KEYS))
            if not (isinstance(block, dict) and block.get(_MARK)):
                continue
            tokens = prompt_tokens(MESSAGES, readable(_prefix_body(body, blocks[:n])))
            if tokens < self.min_tokens:
                continue
            key = digest.copy().digest()
            if key in self.held:
                read = tokens
            else:
                self.held.add(key)
            last = tokens
        self.reads += read > 0
        self.writes += last > read
        return read, max(last - read, 0)
