"""Does a JSON Schema fit the subset OpenAI's Structured Outputs accept with
``strict: true``? `strict_problem` answers None (it fits) or the first reason it does
not, prefixed with a JSON pointer (URI fragment form, ``#`` is the root) to where.

The rules, as OpenAI's Structured Outputs guide documents them ("Supported schemas"):

- the root is an object schema (``type: object``), and not ``anyOf``;
- every schema says what it is: a ``type`` (string, number, integer, boolean, object,
  array, null, or a list of these), an ``anyOf`` of schemas in this subset, or a ``$ref``;
- every object sets ``additionalProperties: false`` and lists every property in
  ``required`` (an optional field is written as a nullable one);
- only the supported keywords: ``pattern`` and ``format`` (date-time, time, date,
  duration, email, hostname, ipv4, ipv6, uuid) for strings; ``multipleOf``, ``maximum``,
  ``exclusiveMaximum``, ``minimum``, ``exclusiveMinimum`` for numbers; ``minItems``,
  ``maxItems`` and one ``items`` schema for arrays; ``enum``, ``const``; ``$defs`` (or
  ``definitions``) and local ``$ref`` (recursion included); ``title``, ``description``;
  the composition keywords ``allOf``, ``not``, ``if``/``then``/``else``,
  ``dependentRequired``, ``dependentSchemas`` are not supported;
- a ``$ref`` stands alone (the openai SDK inlines one with sibling keywords, because the
  API refuses it);
- the size limits: at most 5,000 object properties and 10 levels of object nesting; at most
  120,000 characters of property names, definition names, enum and const values; at most
  1,000 enum values; an enum of more than 250 strings at most 15,000 characters.

A keyword the guide does not list is treated as outside the subset: sending a schema
strict that the API refuses would fail every request, while sending it non-strict only
gives up the guarantee (answers are validated locally either way).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

__all__ = ["MAX_DEPTH", "MAX_PROPERTIES", "strict_problem"]

MAX_PROPERTIES = 5_000
MAX_DEPTH = 10
MAX_STRING_CHARS = 120_000
MAX_ENUM_VALUES = 1_000
LARGE_ENUM = 250  # an enum of more strings than this ...
MAX_LARGE_ENUM_CHARS = 15_000  # ... has at most this many characters in all

TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
FORMATS = frozenset({"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"})
# Documented as not yet supported, so named as such in the reason.
UNSUPPORTED = frozenset({"allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas"})
KEYWORDS = frozenset(
    {
        "type", "anyOf", "$ref", "enum", "const",
        "properties", "required", "additionalProperties",
        "items", "minItems", "maxItems",
        "pattern", "format",
        "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
        "$defs", "definitions",
        "title", "description", "$schema", "$id", "$comment",
    }
)  # fmt: skip
_DEFS = ("$defs", "definitions")


class _Counts:
    """What the size limits count over the whole schema, as written."""

    __slots__ = ("chars", "enum_values", "properties")

    def __init__(self) -> None:
        self.properties = 0
        self.chars = 0
        self.enum_values = 0


def strict_problem(schema: Any) -> str | None:
    """None when `schema` fits OpenAI's strict subset (see the module docstring), else
    the first reason it does not, as ``POINTER: reason``."""
    if not isinstance(schema, dict):
        return "#: the root must be an object schema (type: object)"
    if "anyOf" in schema:
        return "#: the root must not be anyOf (make it an object with the union in a property)"
    if schema.get("type") != "object":
        return "#: the root must be an object schema (type: object)"
    counts = _Counts()
    for pointer, node, listed in _nodes(schema, "#", True):
        if not listed:
            # Told at the property: that is what the user changes.
            return (
                f"{pointer}: not in required (strict mode requires every property; an optional one "
                "is written as nullable)"
            )
        reason = _node_problem(node, schema, counts)
        if reason is not None:
            return f"{pointer}: {reason}"
    if counts.properties > MAX_PROPERTIES:
        return f"#: {counts.properties:,} object properties (strict mode allows {MAX_PROPERTIES:,})"
    if counts.chars > MAX_STRING_CHARS:
        return (
            f"#: {counts.chars:,} characters of property names, definition names, enum and const "
            f"values (strict mode allows {MAX_STRING_CHARS:,})"
        )
    if counts.enum_values > MAX_ENUM_VALUES:
        return f"#: {counts.enum_values:,} enum values (strict mode allows {MAX_ENUM_VALUES:,})"
    depth, where = _depth(schema, schema, "#", {}, set())
    if depth > MAX_DEPTH:
        return f"{where}: {depth} levels of nested objects (strict mode allows {MAX_DEPTH})"
    return None


def _nodes(node: Any, pointer: str, listed: bool) -> Iterator[tuple[str, Any, bool]]:
    """Every subschema as written, parents before children, with its pointer and, for a
    property, whether its object lists it in required (True for the others)."""
    yield pointer, node, listed
    if not isinstance(node, dict):
        return
    required = node.get("required")
    names = required if isinstance(required, list) else []
    for key in ("properties", *_DEFS):
        children = node.get(key)
        if isinstance(children, dict):
            for name, child in children.items():
                child_listed = key != "properties" or name in names
                yield from _nodes(child, f"{pointer}/{key}/{_escape(name)}", child_listed)
    items = node.get("items")
    if isinstance(items, dict | bool):
        yield from _nodes(items, f"{pointer}/items", True)
    any_of = node.get("anyOf")
    if isinstance(any_of, list):
        for i, child in enumerate(any_of):
            yield from _nodes(child, f"{pointer}/anyOf/{i}", True)


def _node_problem(node: Any, root: dict[str, Any], counts: _Counts) -> str | None:
    if not isinstance(node, dict):
        kind = "boolean" if isinstance(node, bool) else type(node).__name__
        return f"a {kind} schema is not in the strict subset"
    for key in node:
        if key in UNSUPPORTED:
            return f"{key!r} is not supported in strict mode"
        if key not in KEYWORDS:
            return f"{key!r} is not in the strict subset"
    if "$ref" in node:
        return _ref_problem(node, root)
    for key in _DEFS:
        if key in node:
            if not isinstance(node[key], dict):
                return f"{key} must be an object of schemas"
            counts.chars += sum(len(name) for name in node[key])
    if "anyOf" in node:
        if not isinstance(node["anyOf"], list) or not node["anyOf"]:
            return "anyOf must be a non-empty list of schemas"
    elif "type" not in node:
        return "no 'type' (strict mode needs a type, anyOf or $ref on every schema)"
    reason = _type_problem(node.get("type"))
    if reason is None and _is_object(node):
        reason = _object_problem(node, counts)
    if reason is None and "items" in node and not isinstance(node["items"], dict | bool):
        reason = "items must be one schema"
    if reason is None and "format" in node and node["format"] not in FORMATS:
        known = ", ".join(sorted(FORMATS))
        reason = f"format {node['format']!r} is not supported in strict mode (use one of {known})"
    if reason is None:
        reason = _values_problem(node, counts)
    return reason


def _type_problem(kind: Any) -> str | None:
    if kind is None:
        return None
    kinds = kind if isinstance(kind, list) else [kind]
    if not kinds:
        return "type must not be an empty list"
    for k in kinds:
        if k not in TYPES:
            return f"type {k!r} is not in the strict subset"
    return None


def _is_object(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    return kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in node


def _object_problem(node: dict[str, Any], counts: _Counts) -> str | None:
    if node.get("additionalProperties") is not False:
        return "additionalProperties must be false (strict mode allows no keys beyond the properties)"
    properties = node.get("properties", {})
    if not isinstance(properties, dict):
        return "properties must be an object of schemas"
    required = node.get("required", [])
    if not isinstance(required, list):
        return "required must be a list of the property names"
    counts.properties += len(properties)
    counts.chars += sum(len(name) for name in properties)
    return None


def _values_problem(node: dict[str, Any], counts: _Counts) -> str | None:
    if "const" in node:
        counts.chars += _chars(node["const"])
    if "enum" not in node:
        return None
    values = node["enum"]
    if not isinstance(values, list) or not values:
        return "enum must be a non-empty list"
    counts.enum_values += len(values)
    chars = sum(_chars(v) for v in values)
    counts.chars += chars
    strings = [v for v in values if isinstance(v, str)]
    if len(strings) > LARGE_ENUM and sum(map(len, strings)) > MAX_LARGE_ENUM_CHARS:
        return (
            f"an enum of {len(strings):,} strings with {sum(map(len, strings)):,} characters (strict mode "
            f"allows {MAX_LARGE_ENUM_CHARS:,} in an enum of more than {LARGE_ENUM})"
        )
    return None


def _chars(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(orjson.dumps(value))


def _ref_problem(node: dict[str, Any], root: dict[str, Any]) -> str | None:
    ref = node["$ref"]
    if len(node) > 1:
        others = ", ".join(k for k in node if k != "$ref")
        return f"a $ref must stand alone in strict mode (it has {others})"
    if not isinstance(ref, str) or not ref.startswith("#"):
        return f"$ref {ref!r} is not local (strict mode takes #... references only)"
    if _resolve(root, ref) is None:
        return f"$ref {ref!r} does not resolve"
    return None


def _resolve(root: dict[str, Any], ref: str) -> Any:
    """The schema a local $ref points to, or None."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _depth(
    node: Any, root: dict[str, Any], pointer: str, seen: dict[str, int], stack: set[str]
) -> tuple[int, str]:
    """The most levels of nested objects under `node` (itself included), following $refs
    but not around a cycle (recursion is allowed), and where the deepest one is."""
    if not isinstance(node, dict):
        return 0, pointer
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref in stack or ref in seen:
            return seen.get(ref, 0), pointer
        stack.add(ref)
        found = _depth(_resolve(root, ref), root, ref, seen, stack)
        stack.discard(ref)
        seen[ref] = found[0]
        return found
    own = 1 if _is_object(node) else 0
    best, where = 0, pointer
    children: list[tuple[str, Any]] = []
    properties = node.get("properties")
    if isinstance(properties, dict):
        children += [(f"{pointer}/properties/{_escape(k)}", v) for k, v in properties.items()]
    if isinstance(node.get("items"), dict):
        children.append((f"{pointer}/items", node["items"]))
    if isinstance(node.get("anyOf"), list):
        children += [(f"{pointer}/anyOf/{i}", v) for i, v in enumerate(node["anyOf"])]
    for child_pointer, child in children:
        depth, at = _depth(child, root, child_pointer, seen, stack)
        if depth > best:
            best, where = depth, at
    return own + best, where


def _escape(name: str) -> str:
    """A key as a JSON pointer token (RFC 6901)."""
    return name.replace("~", "~0").replace("/", "~1")
