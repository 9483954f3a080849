from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmbatch.core.endpoints import EMBEDDINGS, ENDPOINTS
from llmbatch.core.errors import ConfigError
from llmbatch.core.values import Completion, Request
from llmbatch.validate.validator import build_validator, extract_json

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def chat(content: Any = "ok", finish: str | None = "stop") -> Completion:
    message = {"role": "assistant", "content": content}
    return Completion(
        body={"object": "chat.completion", "choices": [{"message": message, "finish_reason": finish}]}
    )


def request(item: dict[str, Any] | None = None, url: str = "/v1/chat/completions") -> Request:
    return Request(custom_id="r-1", body={"model": "m", "messages": []}, url=url, item=item)


def check(specs: list[str], answer: Completion, item: dict[str, Any] | None = None, **kw: Any) -> str | None:
    return build_validator(specs, **kw)(request(item), answer)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- a usable answer ---------------------------------------------------------------


def test_plain_answer_is_valid_without_specs() -> None:
    """With no specs, any chat answer with text content is valid."""
    assert check([], chat("hello")) is None


@pytest.mark.parametrize("body", [None, "<html>502 Bad Gateway</html>", [1, 2]])
def test_body_that_is_not_a_json_object_is_invalid(body: Any) -> None:
    """A 200 whose body is not a JSON object is reported as not JSON."""
    assert check([], Completion(body=body)) == "response body is not JSON"


@pytest.mark.parametrize("body", [{}, {"choices": []}, {"choices": "x"}])
def test_answer_without_choices_is_invalid(body: dict[str, Any]) -> None:
    """A body without a first choice says so."""
    assert check([], Completion(body=body)) == "response has no choices"


def test_no_choices_reason_quotes_an_error_in_the_body() -> None:
    """A proxy's 200 carrying an error shows that error in the reason."""
    body = {"error": {"message": "upstream overloaded"}}
    assert check([], Completion(body=body)) == "response has no choices (error: upstream overloaded)"


def test_answer_without_text_content_is_invalid() -> None:
    """A choice whose content is null (e.g. only tool calls) has no content."""
    assert check([], chat(None)) == "response has no content"


def test_require_finish_rejects_a_truncated_answer() -> None:
    """With require_finish='stop', an answer cut off by max_tokens is invalid."""
    reason = check([], chat('{"sentiment": "pos', finish="length"), require_finish="stop")
    assert reason == "finish_reason was 'length', expected 'stop'"
    assert check([], chat("done", finish="stop"), require_finish="stop") is None


def test_finish_reason_is_ignored_unless_required() -> None:
    """Without require_finish, a 'length' answer passes the usability check."""
    assert check([], chat("partial", finish="length")) is None


def test_embeddings_answer_is_checked_for_embeddings() -> None:
    """An embeddings answer is valid with vectors (or base64) and invalid without."""
    validator = build_validator(["json"])
    req = request(url=EMBEDDINGS)
    endpoint = ENDPOINTS[EMBEDDINGS]
    good = Completion(body={"data": [{"embedding": [0.1, 0.2]}, {"embedding": "AAAA"}]}, endpoint=endpoint)
    assert validator(req, good) is None
    assert validator(req, Completion(body={"data": []}, endpoint=endpoint)) == "response has no embeddings"
    assert (
        validator(req, Completion(body={"data": [{"index": 0}]}, endpoint=endpoint))
        == "response has an entry without an embedding"
    )
    assert validator(req, Completion(body="oops", endpoint=endpoint)) == "response body is not JSON"


# --- json ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1}',
        '  \n{"a": 1}\n ',
        '```json\n{"a": 1}\n```',
        '```\n{"a": 1}\n```',
        "\n```JSON\n[1, 2]\n```\n",
    ],
)
def test_json_accepts_json_with_or_without_a_fence(text: str) -> None:
    """`json` accepts JSON alone, padded with whitespace, or inside a ``` fence."""
    assert check(["json"], chat(text)) is None


def test_json_rejects_prose_with_a_reason() -> None:
    """`json` rejects prose and says the answer is not JSON."""
    reason = check(["json"], chat("Sure! The sentiment is positive."))
    assert reason is not None and reason.startswith("answer is not JSON: ")


def test_json_rejects_an_empty_answer() -> None:
    """An empty or whitespace-only answer is not JSON."""
    assert check(["json"], chat("  ")) == "answer is not JSON: it is empty"
    assert check(["json"], chat("```json\n```")) == "answer is not JSON: it is empty"


def test_extract_json_returns_the_value_and_raises_value_error_with_the_reason() -> None:
    """extract_json unwraps a fence and raises ValueError with a reportable message."""
    assert extract_json('```json\n{"score": 4, "topics": ["battery"]}\n```') == {
        "score": 4,
        "topics": ["battery"],
    }
    assert extract_json("null") is None
    with pytest.raises(ValueError, match=r"^answer is not JSON: "):
        extract_json("{'single': 'quotes'}")


# --- schema ----------------------------------------------------------------------


@pytest.fixture
def review_schema() -> list[str]:
    return [f"schema:{SAMPLES / 'review.schema.json'}"]


def test_schema_accepts_a_matching_answer(review_schema: list[str]) -> None:
    """An answer matching the sample review schema is valid, fenced or not."""
    assert check(review_schema, chat('{"sentiment": "positive", "score": 5, "topics": ["battery"]}')) is None
    assert check(review_schema, chat('```json\n{"sentiment": "neutral", "score": 3}\n```')) is None


def test_schema_reports_a_missing_required_property(review_schema: list[str]) -> None:
    """A missing required field is named in the reason."""
    assert check(review_schema, chat('{"score": 2}')) == "schema: 'sentiment' is a required property"


def test_schema_reports_the_path_of_a_bad_value(review_schema: list[str]) -> None:
    """A bad value's JSON path and the broken rule are in the reason."""
    reason = check(review_schema, chat('{"sentiment": "positive", "score": 7}'))
    assert reason == "schema at $.score: 7 is greater than the maximum of 5"
    reason = check(review_schema, chat('{"sentiment": "positive", "score": 4, "topics": ["a", 3]}'))
    assert reason == "schema at $.topics[1]: 3 is not of type 'string'"


def test_schema_reports_an_answer_that_is_not_json(review_schema: list[str]) -> None:
    """`schema:` alone also rejects a non-JSON answer with the JSON reason."""
    reason = check(review_schema, chat("positive, 4 stars"))
    assert reason is not None and reason.startswith("answer is not JSON: ")


def test_schema_file_is_found_relative_to_base_dir(tmp_path: Path) -> None:
    """A relative schema path is read from base_dir."""
    write(tmp_path / "s.json", '{"type": "array"}')
    validator = build_validator(["schema:s.json"], base_dir=tmp_path)
    assert validator(request(), chat("[1]")) is None
    assert validator(request(), chat("{}")) == "schema: {} is not of type 'array'"


def test_schema_draft_is_chosen_from_dollar_schema(tmp_path: Path) -> None:
    """A draft-04 schema is checked by draft-04 rules (boolean exclusiveMaximum)."""
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "maximum": 5, "exclusiveMaximum": True}
    write(tmp_path / "d4.json", json.dumps(draft4))
    assert check(["schema:d4.json"], chat("4"), base_dir=tmp_path) is None
    assert (
        check(["schema:d4.json"], chat("5"), base_dir=tmp_path)
        == "schema: 5 is greater than or equal to the maximum of 5"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read schema file missing.json: No such file or directory"),
        ("{not json", "schema file bad.json is not JSON"),
        ('{"type": "nope"}', "schema file bad.json is not a valid schema at $.type: 'nope' is not valid"),
        ('{"$schema": "https://example.com/my-draft"}', "schema file bad.json: unknown $schema"),
        ("[1]", "schema file bad.json is not a JSON Schema"),
    ],
)
def test_bad_schema_file_stops_at_build_time(tmp_path: Path, content: str | None, message: str) -> None:
    """A missing, unparsable or invalid schema file is a ConfigError naming the file."""
    name = "missing.json" if content is None else "bad.json"
    if content is not None:
        write(tmp_path / name, content)
    with pytest.raises(ConfigError, match=f"^{message.replace('$', '[$]')}"):
        build_validator([f"schema:{name}"], base_dir=tmp_path)


# --- regex -----------------------------------------------------------------------


def test_regex_searches_the_answer() -> None:
    """`regex:` passes when the pattern is found anywhere and names the pattern when not."""
    specs = ["regex:^label: (yes|no)$"]
    assert check(specs, chat("label: yes")) is None
    assert check(specs, chat("label: maybe")) == "answer does not match regex '^label: (yes|no)$'"


def test_bad_regex_stops_at_build_time() -> None:
    """An invalid pattern is a ConfigError at build time."""
    with pytest.raises(ConfigError, match=r"^validator 'regex:\(unclosed': bad regex: missing \)"):
        build_validator(["regex:(unclosed"])


# --- python ----------------------------------------------------------------------

RULES = """
from llmbatch.core.errors import ValidationFailed

def verdict(item, answer):
    return {"true": True, "false": False, "none": None, "empty": ""}.get(answer, answer)

def raiser(item, answer):
    kind = answer
    if kind == "value":
        raise ValueError("score is out of range")
    if kind == "key":
        return item["missing"]
    if kind == "assert":
        assert False
    if kind == "failed":
        raise ValidationFailed("no topics given")
    if kind == "name":
        return undefined_name
    return True

def sees_item(item, answer):
    return item.get("rating") == 5 or f"item was {item}"

def one_arg(answer):
    return True

def returns_dict(item, answer):
    return {"ok": True}

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    return write(tmp_path / "rules.py", RULES)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("true", None),
        ("none", None),
        ("empty", None),
        ("false", "python:verdict returned False"),
        ("tone is too casual", "tone is too casual"),
    ],
)
def test_python_return_value_decides(rules: Path, answer: str, reason: str | None) -> None:
    """True/None/'' accept; False or a reason string reject."""
    assert check([f"python:{rules}:verdict"], chat(answer)) == reason


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("value", "score is out of range"),
        ("key", "KeyError: 'missing'"),
        ("assert", "python:raiser raised AssertionError"),
        ("failed", "no topics given"),
        ("fine", None),
    ],
)
def test_python_raising_an_answer_error_rejects_with_its_message(
    rules: Path, answer: str, reason: str | None
) -> None:
    """ValueError, KeyError, AssertionError and ValidationFailed mean an invalid answer."""
    assert check([f"python:{rules}:raiser"], chat(answer), item={}) == reason


def test_python_gets_the_item_or_else_the_request_body(rules: Path) -> None:
    """The function receives the data item, or the request body when there is none."""
    validator = build_validator([f"python:{rules}:sees_item"])
    assert validator(request({"rating": 5}), chat()) is None
    assert validator(request(None), chat()) == "item was {'model': 'm', 'messages': []}"


def test_python_module_is_imported_from_base_dir(tmp_path: Path) -> None:
    """python:MODULE:FUNCTION imports MODULE from base_dir."""
    module = f"rules_{tmp_path.name}"
    write(tmp_path / f"{module}.py", RULES)
    validator = build_validator([f"python:{module}:verdict"], base_dir=tmp_path)
    assert validator(request(), chat("false")) == "python:verdict returned False"


def test_python_relative_file_is_found_from_base_dir(tmp_path: Path) -> None:
    """A relative .py path is resolved against base_dir."""
    write(tmp_path / "rules.py", RULES)
    assert check(["python:rules.py:verdict"], chat("true"), base_dir=tmp_path) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("python:nowhere/missing.py:f", "validator file nowhere/missing.py not found"),
        ("python:no_such_module_xyz:f", "validator module 'no_such_module_xyz' not found"),
        ("python:rules.py:absent", "validator python:absent: rules.py has no function 'absent'"),
        (
            "python:rules.py:NOT_A_FUNCTION",
            "validator python:NOT_A_FUNCTION: rules.py.NOT_A_FUNCTION is not callable",
        ),
        ("python:rules.py", "validator 'python:rules.py': use python:MODULE:FUNCTION"),
        (
            "python:broken.py:f",
            "cannot import validator file broken.py: ModuleNotFoundError: No module named 'nope'",
        ),
        ("python:syntax.py:f", "cannot import validator file syntax.py: SyntaxError"),
    ],
)
def test_python_that_cannot_be_loaded_stops_at_build_time(rules: Path, spec: str, message: str) -> None:
    """Missing files, modules or functions and import errors are ConfigErrors."""
    write(rules.parent / "broken.py", "import nope\n")
    write(rules.parent / "syntax.py", "def f(:\n")
    with pytest.raises(ConfigError, match=f"^{message.replace('.', '[.]')}"):
        build_validator([spec], base_dir=rules.parent)


def test_wrong_signature_stops_the_run_at_preflight(rules: Path) -> None:
    """A function that cannot take (item, answer) fails preflight with a TypeError message."""
    validator = build_validator([f"python:{rules}:one_arg"])
    with pytest.raises(ConfigError, match=r"^validator python:one_arg \(.*\) is broken: TypeError: "):
        validator.preflight({"rating": 3})


def test_preflight_accepts_a_working_validator_even_if_the_sample_fails(rules: Path) -> None:
    """Preflight only looks for broken validators; a rejected sample answer is fine."""
    validator = build_validator(
        ["json", f"python:{rules}:raiser", f"schema:{SAMPLES / 'review.schema.json'}"]
    )
    validator.preflight(None)
    validator.preflight({"rating": 1})


def test_name_error_during_a_call_is_a_broken_validator(rules: Path) -> None:
    """A NameError inside the function raises ConfigError instead of re-asking."""
    with pytest.raises(ConfigError, match="is broken: NameError: name 'undefined_name' is not defined"):
        check([f"python:{rules}:raiser"], chat("name"))


def test_unexpected_return_type_is_a_broken_validator(rules: Path) -> None:
    """Returning something other than bool, None or str is reported as a broken validator."""
    with pytest.raises(ConfigError, match="is broken: returned dict; expected True, False, None or a reason"):
        build_validator([f"python:{rules}:returns_dict"]).preflight({})


# --- specs together --------------------------------------------------------------


def test_specs_run_in_order_and_the_first_failure_wins(rules: Path) -> None:
    """With several specs, the reason comes from the first one that fails."""
    specs = ["json", f"schema:{SAMPLES / 'review.schema.json'}", "regex:battery", f"python:{rules}:raiser"]
    assert check(specs, chat("nope")).startswith("answer is not JSON")  # type: ignore[union-attr]
    assert check(specs, chat('{"score": 9}')) == "schema: 'sentiment' is a required property"
    assert (
        check(specs, chat('{"sentiment": "neutral", "score": 3}')) == "answer does not match regex 'battery'"
    )
    assert check(specs, chat('{"sentiment": "neutral", "score": 3, "topics": ["battery"]}')) is None


def test_usability_is_checked_before_any_spec() -> None:
    """A truncated answer reports finish_reason, not a JSON error."""
    reason = check(["json"], chat('{"sentim', finish="length"), require_finish="stop")
    assert reason == "finish_reason was 'length', expected 'stop'"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "jsonschema:x.json",
            "unknown validator 'jsonschema:x.json': use one of json, schema:FILE, regex:PATTERN",
        ),
        ("json:strict", "validator 'json:strict': json takes no argument"),
        ("schema:", "validator 'schema:' is incomplete: use schema:FILE"),
        ("regex:", "validator 'regex:' is incomplete: use regex:PATTERN"),
    ],
)
def test_malformed_spec_is_a_config_error(spec: str, message: str) -> None:
    """A spec that is unknown or missing its argument says what to write instead."""
    with pytest.raises(ConfigError) as info:
        build_validator([spec])
    assert str(info.value).startswith(message)


# --- the samples -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rating", "answer", "reason"),
    [
        (5, '{"sentiment": "positive", "score": 5, "topics": ["battery life"]}', None),
        (1, '```json\n{"sentiment": "negative", "score": 1, "topics": ["shipping"]}\n```', None),
        (2, '{"sentiment": "positive", "score": 4}', "sentiment is positive but the rating is 2"),
        (4, '{"sentiment": "negative", "score": 2}', "sentiment is negative but the rating is 4"),
        (None, '{"sentiment": "negative", "score": 2}', None),
        (3, '{"sentiment": "mixed", "score": 3}', "schema at $.sentiment: 'mixed' is not one of"),
        (3, '["neutral"]', "schema: ['neutral'] is not of type 'object'"),
    ],
)
def test_sample_schema_and_validator_classify_reviews(
    rating: int | None, answer: str, reason: str | None
) -> None:
    """The README's review demo accepts consistent answers and rejects contradictions."""
    validator = build_validator(
        ["schema:review.schema.json", "python:validators.py:sentiment_matches_rating"], base_dir=SAMPLES
    )
    item = {"review": "Arrived late, but the battery lasts for days.", "rating": rating}
    validator.preflight(item)
    got = validator(request(item), chat(answer))
    assert got == reason if reason is None else (got or "").startswith(reason)


def test_sample_validator_rejects_an_answer_that_is_not_an_object() -> None:
    """The sample validator alone turns a JSON list into a readable reason."""
    validator = build_validator(["python:validators.py:sentiment_matches_rating"], base_dir=SAMPLES)
    assert validator(request({"rating": 5}), chat("[]")) == "answer is not a JSON object"
    assert validator(request({"rating": 5}), chat("Positive!")).startswith("answer is not JSON")  # type: ignore[union-attr]
