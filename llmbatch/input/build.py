"""Turn an input line into a `Request`. Three shapes, told apart per line:

1. an OpenAI Batch API line ``{"custom_id", "method", "url", "body"}`` (the same file
   can go to the Batch API or ``vllm run-batch``);
2. a bare request body ``{"model"?, "messages" | "input", ...}`` with optional
   ``metadata`` (kept for the output, never sent); its id is ``metadata.id``, else
   ``id``, else the line number;
3. with a prompt template, any object is a data item whose fields fill the template;
   its id is ``--id-field``, else the line number.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmbatch.core.endpoints import CHAT, EMBEDDINGS, ENDPOINTS, normalise_endpoint
from llmbatch.core.errors import ConfigError, InputError
from llmbatch.core.structured import STRICT_KEYS
from llmbatch.core.values import Request

__all__ = [
    "SETUP_KINDS",
    "RequestBuilder",
    "Template",
    "fingerprint",
]

# InputError kinds that, made by every row, are a mistake in the command rather than in
# the rows, with what to check.
SETUP_KINDS = {
    "no_model": "",
    "template_field": "check the template's {placeholders} against the input's fields",
    "id_field": "check --id-field against the input's fields",
    "shape": "for data items, give --prompt or --template",
}


_Parts = tuple[str, dict[str, Any], str, Any, "dict[str, Any] | None"]


# Body keys that say how a request is served, not what is asked: left out of the
# fingerprint, so a body without them hashes as it always did (an output written before
# --service-tier is not stale with it) and a fallback to another tier is the same request.
NOT_ASKED = frozenset({"service_tier"})


def fingerprint(url: str, body: dict[str, Any]) -> int:
    """A 64-bit hash of what is sent: the endpoint and the body with its keys sorted
    (so the order a file or a template writes them in does not matter), model and
    parameters included; the custom_id and metadata, never sent, are not part of it, nor
    the keys of `NOT_ASKED`, nor the structured-outputs `strict` flag (how the server
    decodes, not what is asked)."""
    if not NOT_ASKED.isdisjoint(body):
        body = {k: v for k, v in body.items() if k not in NOT_ASKED}
    data = url.encode() + b"\0" + orjson.dumps(_without_strict(body), option=orjson.OPT_SORT_KEYS)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


def _without_strict(body: dict[str, Any]) -> dict[str, Any]:
    """`body` without the `strict` flag of its schema format, copied only if it has one."""
    for param, inner in STRICT_KEYS:
        outer = body.get(param)
        if type(outer) is dict:
            spec = outer.get(inner)
            if type(spec) is dict and "strict" in spec:
                kept = {k: v for k, v in spec.items() if k != "strict"}
                body = {**body, param: {**outer, inner: kept}}
    return body


def _body_id(obj: dict[str, Any], line: int) -> str:
    """A bare body's id: `metadata.id`, else `id`, else the line number."""
    metadata = obj.get("metadata")
    cid = metadata.get("id") if isinstance(metadata, dict) else None
    if cid is None:
        cid = obj.get("id")
    return str(cid) if cid is not None and cid != "" else f"line-{line}"


_ENDPOINTS: dict[str, str | None] = {}


def _endpoint(url: str) -> str | None:
    """`normalise_endpoint`, remembered: a file names the same one or two endpoints on
    every line."""
    try:
        return _ENDPOINTS[url]
    except KeyError:
        if len(_ENDPOINTS) > 64:
            return normalise_endpoint(url)
        found = _ENDPOINTS[url] = normalise_endpoint(url)
        return found


class Template:
    """A prompt with ``{field}`` placeholders (``{{`` for a brace), checked once."""

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ConfigError(f"bad prompt template: {exc}") from None
        self.fields = tuple(
            dict.fromkeys(name.split(".")[0].split("[")[0] for _, name, _, _ in parsed if name)
        )
        if any(f == "" or f.isdigit() for f in self.fields):
            raise ConfigError("bad prompt template: placeholders must be named, like {text}")

    def render(self, item: dict[str, Any], line: int) -> str:
        missing = [f for f in self.fields if f not in item]
        if missing:
            names = ", ".join(missing)
            raise InputError(
                f"missing template field{'s' if len(missing) > 1 else ''}: {names}",
                line=line,
                kind="template_field",
            )
        values = {k: (v if isinstance(v, str) else _text(v)) for k, v in item.items() if k in self.fields}
        try:
            return self.text.format_map(values)
        except (KeyError, IndexError, AttributeError, ValueError) as exc:
            raise InputError(f"template could not be filled: {exc}", line=line) from None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestBuilder:
    model: str | None = None
    template: Template | None = None
    system: str | None = None
    id_field: str | None = None
    endpoint: str = CHAT
    params: dict[str, Any] = field(default_factory=dict)
    default_model: str | None = None  # used when neither the line nor --model names one

    def build(self, line: int, obj: dict[str, Any]) -> Request:
        if self.template is not None:
            cid, body, url, metadata, item = self._from_item(line, obj)
        elif "body" in obj and "custom_id" in obj:
            cid, body, url, metadata, item = self._from_batch_line(line, obj)
        elif "messages" in obj or "input" in obj:
            cid, body, url, metadata, item = self._from_body(line, obj)
        else:
            raise self._not_a_request(line)
        return Request(cid, body, url, line, metadata, item, fingerprint(url, body))

    def custom_id(self, line: int, obj: dict[str, Any]) -> str | None:
        """The id `build` would give this object, found without building the request
        (a second look at the input needs only ids); None when there is none. A line
        whose id matches must still be built: it may be a reject."""
        if self.template is not None:
            if self.id_field is None:
                return f"line-{line}"
            value = obj.get(self.id_field)
            return None if value in (None, "") else str(value)
        if "body" in obj and "custom_id" in obj:
            cid = obj["custom_id"]
            return cid if isinstance(cid, str) else None
        if "messages" in obj or "input" in obj:
            return _body_id(obj, line)
        return None

    def _not_a_request(self, line: int) -> InputError:
        return InputError(
            "not a request: expected a Batch API line (custom_id, url, body), a request body "
            "(messages or input), or a data item with --prompt/--template",
            line=line,
            kind="shape",
        )

    # Each shape gives (custom_id, body, url, metadata, item).

    def _finish_body(self, line: int, body: dict[str, Any], url: str) -> dict[str, Any]:
        if self.params:
            body = {**self.params, **body}
        if self.model:
            body["model"] = self.model
        elif not body.get("model"):
            if not self.default_model:
                raise InputError('no model: give --model or a "model" field', line=line, kind="no_model")
            body["model"] = self.default_model
        if url == CHAT and not isinstance(body.get("messages"), list):
            raise InputError('chat request without a "messages" list', line=line)
        if url == EMBEDDINGS and "input" not in body:
            raise InputError('embeddings request without "input"', line=line)
        return body

    def _from_batch_line(self, line: int, obj: dict[str, Any]) -> _Parts:
        cid = obj["custom_id"]
        if not isinstance(cid, str) or not cid:
            raise InputError("custom_id must be a non-empty string", line=line)
        method = obj.get("method", "POST")
        if method != "POST" and (method := str(method).upper()) != "POST":
            raise InputError(f"unsupported method {method!r} (only POST)", line=line)
        raw_url = obj.get("url", CHAT)
        url = _endpoint(raw_url) if isinstance(raw_url, str) else None
        if url is None:
            raise InputError(f"unknown endpoint {raw_url!r} (use {' or '.join(ENDPOINTS)})", line=line)
        body = obj["body"]
        if not isinstance(body, dict):
            raise InputError("body must be a JSON object", line=line)
        return cid, self._finish_body(line, dict(body), url), url, None, None

    def _from_body(self, line: int, obj: dict[str, Any]) -> _Parts:
        custom_id = _body_id(obj, line)
        body = dict(obj)
        metadata = body.pop("metadata", None)
        body.pop("id", None)
        url = self.endpoint if "messages" not in body else CHAT
        if "input" in body and "messages" not in body:
            url = EMBEDDINGS
        return custom_id, self._finish_body(line, body, url), url, metadata, None

    def _from_item(self, line: int, obj: dict[str, Any]) -> _Parts:
        assert self.template is not None
        text = self.template.render(obj, line)
        if self.id_field is not None:
            if self.id_field not in obj or obj[self.id_field] in (None, ""):
                raise InputError(f"missing id field {self.id_field!r}", line=line, kind="id_field")
            custom_id = str(obj[self.id_field])
        else:
            custom_id = f"line-{line}"
        if self.endpoint == EMBEDDINGS:
            body: dict[str, Any] = {"input": text}
        else:
            messages = [{"role": "user", "content": text}]
            if self.system:
                messages.insert(0, {"role": "system", "content": self.system})
            body = {"messages": messages}
        return custom_id, self._finish_body(line, body, self.endpoint), self.endpoint, None, obj
