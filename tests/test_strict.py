"""The strict-subset checker, rule by rule as OpenAI's Structured Outputs guide documents
them; what is sent; the strict flag left out of the request fingerprint."""

from __future__ import annotations

from typing import Any

import pytest

from llmbatch.core.structured import response_format
from llmbatch.input.build import fingerprint
from llmbatch.validate.strict import MAX_DEPTH, strict_problem


def obj(**properties: Any) -> dict[str, Any]:
    """An object schema in the strict subset with these properties."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


STRING = {"type": "string"}

# --- schemas that fit --------------------------------------------------------------

WEATHER = obj(
    location={"type": "string", "description": "The location to get the weather for"},
    unit={"type": ["string", "null"], "enum": ["F", "C", None]},
)
UNION = obj(item={"anyOf": [obj(name=STRING, age={"type": "number"}), obj(number=STRING, city=STRING)]})
DEFS = {
    **obj(steps={"type": "array", "items": {"$ref": "#/$defs/step"}}, final_answer=STRING),
    "$defs": {"step": obj(explanation=STRING, output=STRING)},
}
ROOT_RECURSION = obj(label=STRING, children={"type": "array", "items": {"$ref": "#"}})
LINKED_LIST = {
    **obj(linked_list={"$ref": "#/$defs/node"}),
    "$defs": {
        "node": obj(value={"type": "number"}, next={"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]})
    },
}
CONSTRAINED = obj(
    username={"type": "string", "pattern": "^@[a-zA-Z0-9_]+$"},
    email={"type": "string", "format": "email"},
    when={"type": "string", "format": "date-time"},
    score={"type": "integer", "minimum": 1, "maximum": 5, "multipleOf": 1},
    ratio={"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    tags={"type": "array", "items": STRING, "minItems": 1, "maxItems": 3},
    kind={"type": "string", "const": "review"},
)


@pytest.mark.parametrize(
    "schema",
    [WEATHER, UNION, DEFS, ROOT_RECURSION, LINKED_LIST, CONSTRAINED, {**obj(a=STRING), "title": "T"}],
    ids=["nullable", "nested anyOf", "$defs", "root recursion", "explicit recursion", "constraints", "title"],
)
def test_documented_schemas_fit(schema: dict[str, Any]) -> None:
    """The guide's own examples (nullable fields, anyOf, $defs, recursion, the supported
    constraints) fit the strict subset."""
    assert strict_problem(schema) is None


# --- one rule each -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "array", "items": STRING}, "#: the root must be an object schema"),
        ({"anyOf": [obj(a=STRING), obj(b=STRING)]}, "#: the root must not be anyOf"),
        ([1], "#: the root must be an object schema"),
        (
            {"type": "object", "properties": {"a": STRING}, "required": ["a"]},
            "#: additionalProperties must be false",
        ),
        (obj(inner={"type": "object"}), "#/properties/inner: additionalProperties must be false"),
        (
            {**obj(a=STRING), "additionalProperties": True},
            "#: additionalProperties must be false",
        ),
        ({**obj(a=STRING, b=STRING), "required": ["a"]}, "#/properties/b: not in required"),
        (obj(a={"enum": ["x", "y"]}), "#/properties/a: no 'type'"),
        (obj(a={"type": "any"}), "#/properties/a: type 'any' is not in the strict subset"),
        (obj(a={"type": []}), "#/properties/a: type must not be an empty list"),
        (obj(a={"anyOf": []}), "#/properties/a: anyOf must be a non-empty list"),
        (obj(a={"type": "array", "items": True}), "#/properties/a/items: a boolean schema is not in"),
        (obj(a={"type": "array", "items": [STRING]}), "#/properties/a: items must be one schema"),
        (obj(a={"type": "string", "format": "uri"}), "#/properties/a: format 'uri' is not supported"),
        (obj(a={"type": "string", "enum": []}), "#/properties/a: enum must be a non-empty list"),
        (obj(a={"$ref": "other.json#/x"}), "#/properties/a: $ref 'other.json#/x' is not local"),
        (obj(a={"$ref": "#/$defs/missing"}), "#/properties/a: $ref '#/$defs/missing' does not resolve"),
        (
            {**obj(a={"$ref": "#/$defs/s", "description": "d"}), "$defs": {"s": STRING}},
            "#/properties/a: a $ref must stand alone in strict mode (it has description)",
        ),
        (
            {**obj(a=STRING), "$defs": {"s": {"type": "string", "minLength": 1}}},
            "#/$defs/s: 'minLength' is not in the strict subset",
        ),
    ],
)
def test_each_rule_names_its_reason_and_where(schema: Any, reason: str) -> None:
    """Each documented rule broken alone is the reason given, at its JSON pointer."""
    got = strict_problem(schema)
    assert got is not None and got.startswith(reason), got


@pytest.mark.parametrize(
    "keyword", ["allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas"]
)
def test_composition_keywords_are_not_supported(keyword: str) -> None:
    """The composition keywords the guide lists as unsupported are named as such."""
    schema = obj(a={"type": "string", keyword: {}})
    assert strict_problem(schema) == f"#/properties/a: {keyword!r} is not supported in strict mode"


@pytest.mark.parametrize(
    "keyword",
    [
        "minLength",
        "maxLength",
        "uniqueItems",
        "patternProperties",
        "minProperties",
        "oneOf",
        "default",
        "prefixItems",
    ],
)
def test_keywords_the_guide_does_not_list_are_outside(keyword: str) -> None:
    """A keyword not in the documented subset is a reason (strict would fail every request
    if the API refused it; non-strict only gives up the guarantee)."""
    schema = obj(a={"type": "string", keyword: 1})
    assert strict_problem(schema) == f"#/properties/a: {keyword!r} is not in the strict subset"


def test_the_first_reason_wins_in_document_order() -> None:
    """With several problems, the first met (parents before children) is told."""
    schema = {**obj(a={"type": "object"}, b={"enum": [1]}), "additionalProperties": True}
    assert strict_problem(schema).startswith("#: additionalProperties")  # type: ignore[union-attr]
    del schema["additionalProperties"]
    schema["additionalProperties"] = False
    assert strict_problem(schema).startswith("#/properties/a: additionalProperties")  # type: ignore[union-attr]


# --- the size limits ---------------------------------------------------------------


def nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = obj(leaf=STRING)
    for _ in range(levels - 1):
        schema = obj(child=schema)
    return schema


def test_nesting_depth_is_ten_object_levels() -> None:
    """Ten levels of nested objects fit; eleven do not, and the deepest is pointed at."""
    assert strict_problem(nested(MAX_DEPTH)) is None
    reason = strict_problem(nested(MAX_DEPTH + 1))
    assert reason is not None
    assert reason.endswith("11 levels of nested objects (strict mode allows 10)")
    assert reason.startswith("#" + "/properties/child" * MAX_DEPTH + ":")


def test_depth_follows_refs_but_not_around_a_cycle() -> None:
    """Levels reached through a $ref count; a recursive $ref is not endless depth."""
    deep = {**obj(a={"$ref": "#/$defs/d"}), "$defs": {"d": nested(MAX_DEPTH)}}
    assert "11 levels" in (strict_problem(deep) or "")
    assert strict_problem(LINKED_LIST) is None


def test_at_most_5000_object_properties() -> None:
    """5,000 properties in all fit; 5,001 do not."""
    many = {f"p{i}": STRING for i in range(2500)}
    assert strict_problem(obj(a=obj(**many), b=obj(**{f"q{i}": STRING for i in range(2498)}))) is None
    reason = strict_problem(obj(a=obj(**many), b=obj(**{f"q{i}": STRING for i in range(2500)})))
    assert reason == "#: 5,002 object properties (strict mode allows 5,000)"


def test_at_most_120000_characters_of_names_and_values() -> None:
    """Property names, definition names, enum and const values count toward 120,000."""
    long = "x" * 60_000
    assert strict_problem(obj(a={"type": "string", "const": long})) is None
    reason = strict_problem({**obj(a={"type": "string", "enum": [long, long]}), "$defs": {}})
    assert reason is not None and reason.startswith("#: 120,001 characters")


def test_at_most_1000_enum_values() -> None:
    """1,000 enum values across the schema fit; 1,001 do not."""
    ints = {"type": "integer", "enum": list(range(500))}
    assert strict_problem(obj(a=ints, b=ints)) is None
    reason = strict_problem(obj(a=ints, b=ints, c={"type": "integer", "enum": [0]}))
    assert reason == "#: 1,001 enum values (strict mode allows 1,000)"


def test_a_large_string_enum_has_at_most_15000_characters() -> None:
    """More than 250 strings in one enum: at most 15,000 characters; 250 may be longer."""
    assert strict_problem(obj(a={"type": "string", "enum": [f"{i:0>100}" for i in range(250)]})) is None
    fits = [f"{i:0>59}" for i in range(251)]  # 14,809 characters
    assert strict_problem(obj(a={"type": "string", "enum": fits})) is None
    over = [f"{i:0>60}" for i in range(251)]  # 15,060 characters
    reason = strict_problem(obj(a={"type": "string", "enum": over}))
    assert reason is not None and reason.startswith("#/properties/a: an enum of 251 strings with 15,060")


# --- what is sent, and the fingerprint ---------------------------------------------


def test_response_format_carries_strict_only_when_asked() -> None:
    """strict: true when the schema fits; no key at all otherwise (the body as it was)."""
    assert response_format(WEATHER, "w", True) == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": WEATHER, "strict": True},
    }
    assert response_format(WEATHER, "w", False) == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": WEATHER},
    }


def test_the_strict_flag_is_not_part_of_the_fingerprint() -> None:
    """A body with strict: true (chat's response_format, the Responses API's text.format)
    has the fingerprint of the same body without it; the schema itself still counts."""
    chat = {"model": "m", "messages": [], "response_format": response_format(WEATHER, "w", False)}
    strict = {**chat, "response_format": response_format(WEATHER, "w", True)}
    assert fingerprint("/v1/chat/completions", strict) == fingerprint("/v1/chat/completions", chat)
    assert strict["response_format"]["json_schema"]["strict"] is True  # the body sent is untouched
    fmt = {"type": "json_schema", "name": "w", "schema": WEATHER}
    text = {"model": "m", "input": "x", "text": {"format": fmt}}
    strict_text = {**text, "text": {"format": {**fmt, "strict": True}}}
    assert fingerprint("/v1/responses", strict_text) == fingerprint("/v1/responses", text)
    other = {**chat, "response_format": response_format(CONSTRAINED, "w", True)}
    assert fingerprint("/v1/chat/completions", other) != fingerprint("/v1/chat/completions", chat)
