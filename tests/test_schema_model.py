"""A pydantic model as --schema: its JSON schema made strict where that keeps the model's
meaning, answers validated with the model, bad specs told in one line; and what a schema
file asks for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLES
from pydantic import BaseModel, ConfigDict, Field

from llmbatch.core.errors import ConfigError
from llmbatch.validate.asked import asked_schema
from llmbatch.validate.model import load_model, model_schema
from llmbatch.validate.strict import strict_problem
from llmbatch.validate.validator import Answer, build_validator

WEATHER = {
    "type": "object",
    "properties": {
        "location": {"type": "string"},
        "unit": {"type": ["string", "null"], "enum": ["F", "C", None]},
    },
    "required": ["location", "unit"],
    "additionalProperties": False,
}


def test_a_schema_file_keeps_its_name_and_says_whether_it_fits(tmp_path: Path) -> None:
    """A file's schema is sent as written, named after the file; the sample review schema
    is outside the subset (an enum without a type), a strict-ready one is not."""
    sample = asked_schema(SAMPLES / "review.schema.json")
    assert sample.name == "review" and not sample.strict
    assert (
        sample.problem
        == "#/properties/sentiment: no 'type' (strict mode needs a type, anyOf or $ref on every schema)"
    )
    (tmp_path / "weather.v2.json").write_text(json.dumps(WEATHER))
    asked = asked_schema("weather.v2.json", tmp_path)
    assert (asked.name, asked.schema, asked.strict) == ("weather", WEATHER, True)


class Inner(BaseModel):
    x: int


class Review(BaseModel):
    sentiment: str
    score: int = Field(ge=1, le=5)
    topics: list[str] | None = None
    inner: Inner = Field(description="a nested model, referred to with a description")


class WithDefault(BaseModel):
    text: str
    tries: int = 3


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str


class Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


def test_a_pydantic_model_is_made_strict_where_that_keeps_its_meaning() -> None:
    """additionalProperties false added, a nullable None-default field required (null
    means what leaving it out meant, the default dropped), a $ref with a description
    inlined: the schema fits and the model still accepts what the schema allows."""
    schema = model_schema(Review)
    assert strict_problem(schema) is None
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["sentiment", "score", "inner", "topics"]
    assert "default" not in schema["properties"]["topics"]
    assert schema["properties"]["inner"]["type"] == "object"
    assert schema["properties"]["inner"]["additionalProperties"] is False
    Review.model_validate({"sentiment": "ok", "score": 3, "topics": None, "inner": {"x": 1}})
    assert strict_problem(model_schema(Forbid)) is None


def test_a_model_whose_meaning_strict_mode_cannot_keep_stays_non_strict() -> None:
    """A default other than None (strict would make the model always choose it) and
    extra="allow" are left as they are, and the reason is told."""
    assert strict_problem(model_schema(WithDefault)) == (
        "#/properties/tries: not in required (strict mode requires every property; an optional one "
        "is written as nullable)"
    )
    assert (strict_problem(model_schema(Open)) or "").startswith("#: additionalProperties must be false")


def model_check(spec: str, root: Path) -> Any:
    return build_validator([f"schema:{spec}"], base_dir=root).checks[0]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"sentiment": "positive", "score": 5, "topics": null}', None),
        ('```json\n{"sentiment": "neutral", "score": 3, "topics": ["battery"]}\n```', None),
        (
            '{"sentiment": "positive", "score": 7, "topics": null}',
            "Review at $.score: Input should be less than or equal to 5",
        ),
        (
            '{"sentiment": "mixed", "score": 0, "topics": [1]}',
            "Review at $.sentiment: Input should be 'positive', 'negative' or 'neutral' (and 2 more)",
        ),
        ('{"score": 2}', "Review at $.sentiment: Field required"),
        ("[]", "Review: Input should be an object"),
        ("four stars", "answer is not JSON"),
    ],
)
def test_answers_are_validated_with_the_model(text: str, reason: str | None) -> None:
    """`schema:python:FILE.py:Model` validates with the model: None, or a short reason
    naming the model, where, and what is wrong."""
    check = model_check("python:review_model.py:Review", SAMPLES)
    got = check(Answer({}, text))
    assert got == reason if reason is None or reason.startswith("Review") else (got or "").startswith(reason)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("python:no_such_models_xyz:Review", "schema module 'no_such_models_xyz' not found"),
        ("python:review_model.py:Nope", "schema python:review_model.py:Nope: review_model.py has no 'Nope'"),
        (
            "python:review_model.py:Literal",
            "schema python:review_model.py:Literal: review_model.py.Literal is not a pydantic model",
        ),
        ("python:review_model.py", "schema 'python:review_model.py': use python:MODULE:Model"),
        ("python:missing.py:Review", "schema file missing.py not found"),
    ],
)
def test_a_bad_model_spec_is_one_config_error(spec: str, message: str) -> None:
    """No module, no such name, not a BaseModel, no name at all: a one-line ConfigError."""
    with pytest.raises(ConfigError) as info:
        load_model(spec, SAMPLES)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
