"""Is an answer good enough to keep? The validate stage says *valid* (None) or
*invalid* (a short reason, written to the output); the engine asks again on invalid
until the item's request cap.

    validator = build_validator(["json", "schema:review.schema.json"], require_finish="stop")
    validator.preflight(first_item)        # once, before any request is sent
    reason = validator(request, completion)

Every answer is first checked for being usable at all, by its endpoint
(:mod:`llmbatch.core.endpoints`): a chat body with a first choice that has string
content (and, with `require_finish`, the expected `finish_reason`), a Responses body with
output text, an embeddings body whose `data` holds embeddings... Then the specs run in
order and the first failure's reason wins:

    json                      the answer text is JSON (a ``` fence around it is fine)
    schema:FILE               ... and matches the JSON Schema in FILE
    schema:python:MODULE:Model  ... and validates with that pydantic model (or FILE.py:Model)
    regex:PATTERN             re.search(PATTERN, answer text) matches
    python:MODULE:FUNCTION    FUNCTION(item, answer_text) accepts it
    python:FILE.py:FUNCTION

Specs look at the answer text, so embeddings and moderations answers only get the
usability check.

Two kinds of failure are kept apart: an invalid *answer* is a reason string and costs
one request of the item's budget; a broken *validator* (a user function that raises
TypeError, NameError, ...) raises `ConfigError`, because asking the model again cannot
fix it and the engine stops the run. Everything is read and compiled by
`build_validator`; checking an answer does no IO and parses its JSON at most once.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import orjson

from llmbatch.core.errors import ConfigError, ValidationFailed
from llmbatch.core.values import Completion, Request
from llmbatch.validate.asked import read_schema
from llmbatch.validate.model import PREFIX as MODEL_PREFIX
from llmbatch.validate.model import ModelCheck, load_model

__all__ = ["KINDS", "Answer", "Check", "Validator", "build_validator", "extract_json"]

KINDS = ("json", "schema:FILE", "regex:PATTERN", "python:MODULE:FUNCTION", "python:FILE.py:FUNCTION")

# Reasons land in every output line; a schema message can quote a whole answer.
MAX_REASON = 300

# Raised by a user function, these mean "this answer is wrong"; anything else means the
# function itself is wrong.
INVALID_ANSWER_ERRORS = (ValueError, LookupError, AssertionError, ValidationFailed)

_FENCE_LANG = re.compile(r"[\w+.-]*")
_SAMPLE_ANSWER = "{}"
_UNPARSED: Any = object()


def extract_json(text: str) -> Any:
    """Parse an answer as JSON, tolerating whitespace and a ```json (or plain ```) fence.

    Raises ValueError whose message is the reason to report.
    """
    t = text.strip()
    if len(t) >= 6 and t.startswith("```") and t.endswith("```"):
        inner = t[3:-3]
        head, newline, rest = inner.partition("\n")
        if newline and _FENCE_LANG.fullmatch(head.strip()):
            inner = rest
        t = inner.strip()
    if not t:
        raise ValueError("answer is not JSON: it is empty")
    try:
        return orjson.loads(t)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"answer is not JSON: {exc}") from None


class Answer:
    """One answer as the checks see it: the item it answers and its text.

    Not a frozen value on purpose: the parsed JSON is cached on first use so that
    `json` and `schema:` together parse an answer once.
    """

    __slots__ = ("_error", "_parsed", "item", "text")

    def __init__(self, item: Any, text: str) -> None:
        self.item = item
        self.text = text
        self._parsed: Any = _UNPARSED
        self._error: str | None = None

    def json(self) -> Any:
        """The answer parsed by `extract_json`; raises ValueError(reason) if it is not JSON."""
        if self._parsed is _UNPARSED and self._error is None:
            try:
                self._parsed = extract_json(self.text)
            except ValueError as exc:
                self._error = str(exc)
        if self._error is not None:
            raise ValueError(self._error)
        return self._parsed


class Check(Protocol):
    """One spec: None when the answer passes, else the reason. Raises ConfigError when
    the check itself is broken."""

    def __call__(self, answer: Answer, /) -> str | None: ...


@dataclass(frozen=True, slots=True)
class JsonCheck:
    def __call__(self, answer: Answer, /) -> str | None:
        try:
            answer.json()
        except ValueError as exc:
            return str(exc)
        return None


@dataclass(frozen=True, slots=True)
class SchemaCheck:
    file: str
    schema: Any  # a compiled jsonschema validator

    def __call__(self, answer: Answer, /) -> str | None:
        try:
            data = answer.json()
        except ValueError as exc:
            return str(exc)
        from jsonschema.exceptions import best_match  # type: ignore[import-untyped]

        error = best_match(self.schema.iter_errors(data))
        if error is None:
            return None
        where = f" at {error.json_path}" if error.absolute_path else ""
        return _short(f"schema{where}: {error.message}")


@dataclass(frozen=True, slots=True)
class RegexCheck:
    pattern: re.Pattern[str]

    def __call__(self, answer: Answer, /) -> str | None:
        if self.pattern.search(answer.text):
            return None
        return _short(f"answer does not match regex {self.pattern.pattern!r}")


@dataclass(frozen=True, slots=True)
class PythonCheck:
    """A user function `fn(item, answer_text)`: True or None or "" accept; False or a
    reason string reject; raising one of INVALID_ANSWER_ERRORS rejects with its message."""

    name: str
    source: str
    fn: Callable[[Any, str], object]

    def __call__(self, answer: Answer, /) -> str | None:
        try:
            result = self.fn(answer.item, answer.text)
        except ValidationFailed as exc:
            return exc.reason or f"python:{self.name} rejected the answer"
        except INVALID_ANSWER_ERRORS as exc:
            return _exception_reason(exc, self.name)
        except Exception as exc:
            raise self._broken(f"{type(exc).__name__}: {exc}") from exc
        if result is True or result is None:
            return None
        if result is False:
            return f"python:{self.name} returned False"
        if isinstance(result, str):
            return _short(result) if result else None
        raise self._broken(f"returned {type(result).__name__}; expected True, False, None or a reason")

    def _broken(self, what: str) -> ConfigError:
        return ConfigError(f"validator python:{self.name} ({self.source}) is broken: {_short(what)}")


@dataclass(frozen=True, slots=True)
class Validator:
    """Checks answers: call it with a request and its completion to get None (valid)
    or the reason it is invalid. Build one with `build_validator`."""

    checks: tuple[Check, ...] = ()
    require_finish: str | None = None

    def __call__(self, request: Request, completion: Completion) -> str | None:
        """None when the answer is valid, else a short reason. Raises ConfigError when a
        check is broken (asking again cannot help)."""
        endpoint = completion.endpoint
        reason = endpoint.unusable(completion.body, self.require_finish)
        if reason is not None or not self.checks or not endpoint.text_answers:
            return _short(reason) if reason is not None else None
        text = completion.text
        assert text is not None  # unusable() checked it
        answer = Answer(request.item if request.item is not None else request.body, text)
        for check in self.checks:
            reason = check(answer)
            if reason is not None:
                return reason
        return None

    def preflight(self, sample_item: dict[str, Any] | None) -> None:
        """Run every check once on `sample_item` (or {}) and the answer '{}', so that a
        broken user function stops the run before any request is sent. Whether the
        sample passes does not matter; only ConfigError escapes."""
        answer = Answer(sample_item if sample_item is not None else {}, _SAMPLE_ANSWER)
        for check in self.checks:
            check(answer)


def build_validator(
    specs: Iterable[str], *, require_finish: str | None = None, base_dir: Path | None = None
) -> Validator:
    """Compile `specs` (see the module docstring) into a Validator.

    Files and modules are looked up relative to `base_dir`, else the current directory.
    Raises ConfigError with a one-line message for anything that cannot be used.
    """
    root = base_dir if base_dir is not None else Path.cwd()
    return Validator(checks=tuple(_build_check(spec, root) for spec in specs), require_finish=require_finish)


def _build_check(spec: str, root: Path) -> Check:
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "json":
        if arg:
            raise ConfigError(f"validator {spec!r}: json takes no argument")
        return JsonCheck()
    if kind in ("schema", "regex", "python") and not arg:
        usage = next(k for k in KINDS if k.startswith(kind))
        raise ConfigError(f"validator {spec!r} is incomplete: use {usage}")
    if kind == "schema":
        if arg.startswith(MODEL_PREFIX):
            return ModelCheck(arg, load_model(arg, root))
        return _schema_check(arg, root)
    if kind == "regex":
        try:
            return RegexCheck(re.compile(arg))
        except re.error as exc:
            raise ConfigError(f"validator {spec!r}: bad regex: {exc}") from None
    if kind == "python":
        return _python_check(arg, root)
    raise ConfigError(f"unknown validator {spec!r}: use one of {', '.join(KINDS)}")


def _schema_check(file: str, root: Path) -> SchemaCheck:
    # jsonschema is imported here, not at the top: a run without a schema need not pay
    # for its import.
    from jsonschema import Draft202012Validator, SchemaError  # type: ignore[import-untyped]
    from jsonschema.validators import validator_for  # type: ignore[import-untyped]

    schema = read_schema(_resolve(file, root), file)
    if not isinstance(schema, dict | bool):
        raise ConfigError(f"schema file {file} is not a JSON Schema: expected an object")
    cls = Draft202012Validator
    if isinstance(schema, dict) and "$schema" in schema:
        cls = validator_for(schema, default=None)
        if cls is None:
            raise ConfigError(f"schema file {file}: unknown $schema {schema['$schema']!r}")
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        where = f" at {exc.json_path}" if exc.absolute_path else ""
        raise ConfigError(f"schema file {file} is not a valid schema{where}: {_short(exc.message)}") from None
    return SchemaCheck(file, cls(schema, format_checker=cls.FORMAT_CHECKER))


def _python_check(arg: str, root: Path) -> PythonCheck:
    target, _, name = arg.rpartition(":")
    if not target or not name.isidentifier():
        raise ConfigError(f"validator 'python:{arg}': use python:MODULE:FUNCTION or python:FILE.py:FUNCTION")
    fn = getattr(load_module(target, root), name, None)
    if fn is None:
        raise ConfigError(f"validator python:{name}: {target} has no function {name!r}")
    if not callable(fn):
        raise ConfigError(f"validator python:{name}: {target}.{name} is not callable")
    return PythonCheck(name, target, fn)


def load_module(target: str, root: Path, what: str = "validator") -> ModuleType:
    """The module `target` names: a FILE.py (or a path) relative to `root`, else a MODULE
    importable from `root` or sys.path. Raises ConfigError, naming it as `what`'s."""
    if target.endswith(".py") or "/" in target or "\\" in target:
        return _import_file(_resolve(target, root), target, what)
    return _import_module(target, root, what)


def _import_file(path: Path, shown: str, what: str) -> ModuleType:
    path = path.resolve()
    # Unique per file, so two validator files called validators.py do not collide.
    digest = hashlib.blake2b(str(path).encode(), digest_size=6).hexdigest()
    module_name = f"_llmbatch_validator_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    if not path.is_file():
        raise ConfigError(f"{what} file {shown} not found")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{what} file {shown} cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look themselves up here
    try:
        with _on_sys_path(path.parent):
            spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ConfigError(f"cannot import {what} file {shown}: {type(exc).__name__}: {exc}") from exc
    return module


def _import_module(name: str, root: Path, what: str) -> ModuleType:
    try:
        with _on_sys_path(root):
            return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(f"{what} module {name!r} not found (looked in {root} and sys.path)") from None
        raise ConfigError(f"cannot import {what} module {name}: {exc}") from exc
    except Exception as exc:
        raise ConfigError(f"cannot import {what} module {name}: {type(exc).__name__}: {exc}") from exc


@contextmanager
def _on_sys_path(directory: Path) -> Iterator[None]:
    entry = str(directory)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        sys.path.remove(entry)


def _resolve(file: str, root: Path) -> Path:
    path = Path(file).expanduser()
    return path if path.is_absolute() else root / path


def _exception_reason(exc: BaseException, name: str) -> str:
    message = str(exc)
    if type(exc) in (ValueError, AssertionError) and message:
        return _short(message)
    if not message:
        return f"python:{name} raised {type(exc).__name__}"
    return _short(f"{type(exc).__name__}: {message}")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"
