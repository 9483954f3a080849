"""A pydantic model as the answer's schema: ``--schema python:MODULE:Model`` (or
``python:FILE.py:Model``) asks for the model's JSON schema and validates answers with
the model itself.

pydantic's schema is tightened for strict mode only where that keeps the model's
meaning: an object without ``additionalProperties`` gets ``false`` (pydantic ignores
extra keys, so asking for none changes nothing), a field that is nullable with a
``None`` default is listed as required (null says what leaving it out said), a ``$ref``
with sibling keywords is inlined, a lone ``allOf`` unwrapped. Anything else (a default
other than None, ``extra="allow"``, a constraint outside the subset) is left as it is,
and `llmbatch.validate.strict.strict_problem` says why the schema goes non-strict.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from llmbatch.core.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from llmbatch.validate.validator import Answer

__all__ = ["ModelCheck", "load_model", "model_schema"]

PREFIX = "python:"
MAX_REASON = 300  # as every validator's reason: it lands in each output line


def load_model(spec: str, root: Path) -> type[BaseModel]:
    """The pydantic model `spec` (``python:MODULE:Model`` or ``python:FILE.py:Model``)
    names. Raises ConfigError with one line for anything that cannot be used."""
    from pydantic import BaseModel

    from llmbatch.validate.validator import load_module

    arg = spec.removeprefix(PREFIX)
    target, _, name = arg.rpartition(":")
    if not target or not name.isidentifier():
        raise ConfigError(f"schema {spec!r}: use python:MODULE:Model or python:FILE.py:Model")
    model = getattr(load_module(target, root, "schema"), name, None)
    if model is None:
        raise ConfigError(f"schema {spec}: {target} has no {name!r}")
    if not isinstance(model, type) or not issubclass(model, BaseModel):
        raise ConfigError(f"schema {spec}: {target}.{name} is not a pydantic model (a BaseModel subclass)")
    return model


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema, tightened for strict mode where that keeps its meaning."""
    try:
        schema = model.model_json_schema()
    except Exception as exc:  # pydantic refuses some types (a callable field...)
        raise ConfigError(f"schema {model.__name__}: no JSON schema: {type(exc).__name__}: {exc}") from exc
    root = copy.deepcopy(schema)
    tightened: dict[str, Any] = _tighten(root, root)
    return tightened


_MAPS = ("properties", "$defs", "definitions", "patternProperties")  # name -> schema
_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")  # [schema, ...]
_ONE = ("items", "additionalProperties", "not", "contains")  # schema


def _tighten(node: Any, root: dict[str, Any]) -> Any:
    if not isinstance(node, dict):
        return node
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
        rest = {k: v for k, v in node.items() if k != "allOf"}
        return _tighten({**all_of[0], **rest}, root)
    ref = node.get("$ref")
    if isinstance(ref, str) and len(node) > 1 and ref.startswith("#/"):
        target = _resolve(root, ref)
        if isinstance(target, dict) and "$ref" not in target:
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return _tighten({**copy.deepcopy(target), **rest}, root)
    out = dict(node)
    for key in _MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _tighten(child, root) for name, child in out[key].items()}
    for key in _LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_tighten(child, root) for child in out[key]]
    for key in _ONE:
        if isinstance(out.get(key), dict):
            out[key] = _tighten(out[key], root)
    properties = out.get("properties")
    if out.get("type") == "object" and isinstance(properties, dict):
        out.setdefault("additionalProperties", False)
        required = list(out.get("required", []))
        for name, prop in properties.items():
            if name not in required and isinstance(prop, dict) and _null_default(prop):
                prop.pop("default")
                required.append(name)
        out["required"] = required
    return out


def _null_default(prop: dict[str, Any]) -> bool:
    """Leaving this field out means None, and null is among its values."""
    if "default" not in prop or prop["default"] is not None:
        return False
    kind = prop.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    any_of = prop.get("anyOf")
    return isinstance(any_of, list) and any(isinstance(s, dict) and s.get("type") == "null" for s in any_of)


def _resolve(root: dict[str, Any], ref: str) -> Any:
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict):
            return None
        node = node.get(part.replace("~1", "/").replace("~0", "~"))
    return node


@dataclass(frozen=True, slots=True)
class ModelCheck:
    """Validates an answer with a pydantic model (``Model.model_validate_json``); the
    reason names the model, where, and pydantic's message."""

    spec: str
    model: type[BaseModel]

    def __call__(self, answer: Answer, /) -> str | None:
        from pydantic import ValidationError

        try:
            data = answer.json()  # the answer-is-not-JSON reason, as for schema:FILE
        except ValueError as exc:
            return str(exc)
        try:
            # Through JSON again: the model validates JSON by JSON's rules (dates as
            # strings, strict fields), and a ```json fence is already gone.
            self.model.model_validate_json(orjson.dumps(data))
        except ValidationError as exc:
            return _reason(self.model.__name__, exc)
        return None


def _reason(name: str, exc: Any) -> str:
    errors = exc.errors(include_url=False)
    if not errors:
        return f"{name}: {exc}"
    first = errors[0]
    where = _path(first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    text = f"{name}{f' at {where}' if where != '$' else ''}: {first.get('msg', 'invalid')}{more}"
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def _path(loc: tuple[Any, ...]) -> str:
    out = "$"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
