"""Turn an input line into a `Request`. Three shapes, told apart per line:

1. an OpenAI Batch API line ``{"custom_id", "method", "url", "body"}`` (the same file
   can go to the Batch API or ``vllm run-batch``);
2. a bare request body ``{"model"?, "messages" | "prompt" | "input", ...}`` with optional
   ``metadata`` (kept for the output, never sent); its id is ``metadata.id``, else
   ``id``, else the line number; its endpoint is ``--endpoint``, else told by its keys
   (messages: chat, prompt: completions, input: embeddings);
3. with a prompt template, any object is a data item whose fields fill the template;
   its id is ``--id-field``, else the line number.

What each endpoint's body holds (where the template's text, ``--system``,
``--max-tokens`` and ``--schema`` go) is the endpoint's own (:mod:`llmbatch.core.endpoints`).
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmbatch.core.attachments import attached_bytes
from llmbatch.core.cachekey import CACHE_KEY, CACHE_KEY_ENDPOINTS, with_breakpoints
from llmbatch.core.endpoints import (
    CHAT,
    CHAT_ENDPOINT,
    EMBEDDINGS,
    ENDPOINTS,
    MESSAGES,
    Endpoint,
    bare_endpoint,
    known_endpoints,
    normalise_endpoint,
)
from llmbatch.core.errors import ConfigError, InputError
from llmbatch.core.structured import STRICT_KEYS
from llmbatch.core.values import Request
from llmbatch.input.attach import Attacher

__all__ = [
    "SETUP_KINDS",
    "RequestBuilder",
    "Template",
    "fingerprint",
    "fingerprint_before",
]

# InputError kinds that, made by every row, are a mistake in the command rather than in
# the rows, with what to check.
SETUP_KINDS = {
    "no_model": "",
    "template_field": "check the template's {placeholders} against the input's fields",
    "id_field": "check --id-field against the input's fields",
    "attach_field": "check --attach against the input's fields",
    "shape": "for data items, give --prompt or --template",
    "bare_endpoint": "give --endpoint, or write Batch API lines with their url",
    "no_max_tokens": "leave out --max-tokens for this endpoint",
    "no_validators": "leave out --validate and --schema for this endpoint",
}
# A bare body with `input` is an embeddings request by its keys, unless it holds one of
# these (the Responses API's own) or names a moderation model: then it is refused, saying
# to give --endpoint, rather than sent to the wrong endpoint.
_RESPONSES_KEYS = frozenset(
    {"instructions", "max_output_tokens", "text", "reasoning", "tools", "tool_choice", "previous_response_id",
     "truncation", "include", "conversation", "background", "store"}
)  # fmt: skip


_Parts = tuple[str, dict[str, Any], str, Any, "dict[str, Any] | None"]


# Body keys that say how a request is served or kept, not what is asked (the tier, the
# prompt cache's routing key, storing the answer, metadata the provider files it under):
# left out of the fingerprint, so a fallback to another tier or a new cache key is the
# same request, and a body without them hashes as it always did.
NOT_ASKED = frozenset({"service_tier", "prompt_cache_key", "store", "metadata"})
# Of those, the keys fingerprints held before they were left out: a line written then
# for a body with one of them carries that older hash, which a rerun still accepts.
ASKED_BEFORE = frozenset({"prompt_cache_key", "store", "metadata"})
_TIER_ONLY = frozenset({"service_tier"})


def fingerprint(url: str, body: dict[str, Any], leave_out: frozenset[str] = NOT_ASKED) -> int:
    """A 64-bit hash of what is sent: the endpoint and the body with its keys sorted
    (so the order a file or a template writes them in does not matter), model and
    parameters included; the custom_id and metadata, never sent, are not part of it, nor
    the keys of `leave_out` (`NOT_ASKED`), nor the structured-outputs `strict` flag (how
    the server decodes, not what is asked)."""
    if not leave_out.isdisjoint(body):
        body = {k: v for k, v in body.items() if k not in leave_out}
    data = url.encode() + b"\0" + orjson.dumps(_without_strict(body), option=orjson.OPT_SORT_KEYS)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


def fingerprint_before(url: str, body: dict[str, Any]) -> int:
    """The fingerprint a body holding a key of `ASKED_BEFORE` had before those keys were
    left out (0 for any other body: its fingerprint has not changed)."""
    return fingerprint(url, body, _TIER_ONLY) if not ASKED_BEFORE.isdisjoint(body) else 0


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
    # --endpoint; None: a bare body's is told by its keys, a template's is chat.
    endpoint: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    default_model: str | None = None  # used when neither the line nor --model names one
    max_tokens: int | None = None  # --max-tokens: each endpoint's answer ceiling field
    # --schema as chat's response_format (`core.structured.response_format`); each endpoint puts it where
    # it asks for it (`Endpoint.schema_params`).
    schema: dict[str, Any] | None = None
    validating: bool = False  # validators given: refused for endpoints whose answers are not text
    # --attach: the data item fields whose files (images, PDFs) the request carries.
    attach: Attacher | None = None
    # The prompt cache key a templated request carries (`llmbatch.core.cachekey`), unless
    # its body has one; None: none.
    cache_key: str | None = None
    # The fixed prefix a templated Messages request marks for Anthropic's prompt cache
    # (`llmbatch.core.cachekey.with_breakpoints`); None: no breakpoints.
    cache_prefix: str | None = None

    def build(self, line: int, obj: dict[str, Any]) -> Request:
        if self.template is not None:
            cid, body, url, metadata, item = self._from_item(line, obj)
        elif "body" in obj and "custom_id" in obj:
            cid, body, url, metadata, item = self._from_batch_line(line, obj)
        elif self.endpoint is not None or bare_endpoint(obj) is not None:
            cid, body, url, metadata, item = self._from_body(line, obj)
        else:
            raise self._not_a_request(line)
        request = Request(cid, body, url, line, metadata, item, fingerprint(url, body))
        if not ASKED_BEFORE.isdisjoint(body):
            request.fp_before = fingerprint_before(url, body)
        if self.attach is not None:
            request.attached = attached_bytes(body.get("messages")) + attached_bytes(body.get("input"))
        if self.cache_key is not None and url in CACHE_KEY_ENDPOINTS:
            # After the fingerprints: it is left out of them, and no older line asked it.
            body.setdefault(CACHE_KEY, self.cache_key)
        elif self.cache_prefix is not None and url == MESSAGES and self.template is not None:
            with_breakpoints(body, self.cache_prefix)  # after the fingerprints, as the key
        return request

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
        if self.endpoint is not None or bare_endpoint(obj) is not None:
            return _body_id(obj, line)
        return None

    def _not_a_request(self, line: int) -> InputError:
        return InputError(
            "not a request: expected a Batch API line (custom_id, url, body), a request body "
            "(messages, prompt or input), or a data item with --prompt/--template",
            line=line,
            kind="shape",
        )

    # Each shape gives (custom_id, body, url, metadata, item).

    def _finish_body(
        self, line: int, body: dict[str, Any], endpoint: Endpoint, *, own: bool = False
    ) -> dict[str, Any]:
        """The body as sent: the flags' parameters where the endpoint takes them. A line
        that names its `own` endpoint (a Batch API line, a bare body without --endpoint)
        in a file of several gets --max-tokens where its endpoint takes it
        (`Endpoint.line_max_tokens_key`), and its validators only where they read its
        answers; a run whose --endpoint has neither refuses the flags."""
        if self.params:
            body = {**self.params, **body}
        if self.max_tokens is not None:
            key = endpoint.line_max_tokens_key if own else endpoint.max_tokens_key
            if key is not None:
                body.setdefault(key, self.max_tokens)
            elif not own:
                message = f"--max-tokens has no meaning for {endpoint.path} (its answers have no length)"
                raise InputError(message, line=line, kind="no_max_tokens")
        if endpoint.default_max_tokens is not None and endpoint.max_tokens_key is not None:
            body.setdefault(endpoint.max_tokens_key, endpoint.default_max_tokens)
        if self.schema is not None:
            for key, value in endpoint.schema_params(self.schema).items():
                body.setdefault(key, value)
        if self.validating and not endpoint.takes_validators and not own:
            message = f"{endpoint.path} answers are not checked: --validate and --schema do not apply"
            raise InputError(message, line=line, kind="no_validators")
        if self.model:
            body["model"] = self.model
        elif not body.get("model"):
            if not self.default_model:
                raise InputError('no model: give --model or a "model" field', line=line, kind="no_model")
            body["model"] = self.default_model
        missing = endpoint.missing(body)
        if missing is not None:
            raise InputError(missing, line=line)
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
            raise InputError(f"unknown endpoint {raw_url!r} (use {known_endpoints()})", line=line)
        body = obj["body"]
        if not isinstance(body, dict):
            raise InputError("body must be a JSON object", line=line)
        return cid, self._finish_body(line, dict(body), ENDPOINTS[url], own=True), url, None, None

    def _from_body(self, line: int, obj: dict[str, Any]) -> _Parts:
        custom_id = _body_id(obj, line)
        body = dict(obj)
        metadata = body.pop("metadata", None)
        body.pop("id", None)
        own = self.endpoint is None
        if self.endpoint is not None:
            endpoint = ENDPOINTS[self.endpoint]
        else:
            found = bare_endpoint(body)
            assert found is not None  # build() checked
            endpoint = found
            if endpoint.path == EMBEDDINGS and (
                (others := sorted(_RESPONSES_KEYS.intersection(body)))
                or "moderation" in str(body.get("model"))
            ):
                what = f"input and {', '.join(others)}" if others else f"the model {body.get('model')!r}"
                raise InputError(
                    f"a body with {what} is not an embeddings request; for the Responses API or "
                    "moderations, give --endpoint /v1/responses or /v1/moderations",
                    line=line,
                    kind="bare_endpoint",
                )
        return custom_id, self._finish_body(line, body, endpoint, own=own), endpoint.path, metadata, None

    def _from_item(self, line: int, obj: dict[str, Any]) -> _Parts:
        assert self.template is not None
        text = self.template.render(obj, line)
        if self.id_field is not None:
            if self.id_field not in obj or obj[self.id_field] in (None, ""):
                raise InputError(f"missing id field {self.id_field!r}", line=line, kind="id_field")
            custom_id = str(obj[self.id_field])
        else:
            custom_id = f"line-{line}"
        endpoint = CHAT_ENDPOINT if self.endpoint is None else ENDPOINTS[self.endpoint]
        body = endpoint.from_text(text, self.system)
        if self.attach is not None and (attachments := self.attach.read(obj, line)):
            try:
                body = endpoint.attach(body, attachments)
            except ValueError as exc:
                raise InputError(str(exc), line=line) from None
        return custom_id, self._finish_body(line, body, endpoint), endpoint.path, None, obj
