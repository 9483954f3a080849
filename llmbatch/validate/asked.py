"""What ``--schema`` asks for: the schema sent with each request, its name, and whether
it may go strict (`llmbatch.validate.strict.strict_problem`).

    asked = asked_schema("review.schema.json")           # or "python:models:Review"
    asked.schema, asked.name, asked.problem               # problem None: send strict: true

The same spec is checked locally by the ``schema:`` validator in every case: a
compatible server may not enforce a schema, strict or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from llmbatch.core.errors import ConfigError
from llmbatch.validate.model import PREFIX, load_model, model_schema
from llmbatch.validate.strict import strict_problem

__all__ = ["AskedSchema", "asked_schema", "read_schema"]

MAX_NAME = 64  # the API's limit on a response format's name


@dataclass(frozen=True, slots=True)
class AskedSchema:
    schema: dict[str, Any]
    name: str
    problem: str | None  # why it cannot be sent strict; None: it can

    @property
    def strict(self) -> bool:
        return self.problem is None


def asked_schema(spec: str | Path, root: Path | None = None) -> AskedSchema:
    """The schema a ``--schema`` spec asks for: a JSON Schema file, or
    ``python:MODULE:Model`` / ``python:FILE.py:Model`` (a pydantic model). Relative
    names are found from `root` (default: the working directory). Raises ConfigError."""
    text = str(spec)
    if text.startswith(PREFIX):
        model = load_model(text, root if root is not None else Path.cwd())
        schema = model_schema(model)
        return AskedSchema(schema, _name(model.__name__), strict_problem(schema))
    path = Path(spec)
    if root is not None and not path.is_absolute():
        path = root / path
    schema = read_schema(path, str(spec))
    # The name as llmbatch has always made it: it is part of the request's fingerprint.
    return AskedSchema(schema, _name(path.stem.split(".")[0]), strict_problem(schema))


def _name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in text)[:MAX_NAME] or "answer"


def read_schema(path: Path, shown: str) -> Any:
    """The JSON in a schema file (`shown` names it in the error): what --schema asks for
    and the schema validator checks against, read alike."""
    try:
        return orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read schema file {shown}: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"schema file {shown} is not JSON: {exc}") from None
