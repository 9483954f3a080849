"""The request piece that asks for structured outputs: a JSON Schema by name, strict or
not. One function builds it for every endpoint that takes one.

    response_format(schema, "review", strict=True)
    # {"type": "json_schema", "json_schema": {"name": "review", "schema": {...}, "strict": True}}

Chat completions send it as ``response_format``; the Responses API takes the same fields
flattened into ``text.format``: ``{"type": "json_schema", **response_format(...)["json_schema"]}``.
Whether a schema may be strict is `llmbatch.validate.strict.strict_problem`'s to say.
"""

from __future__ import annotations

from typing import Any

__all__ = ["STRICT_KEYS", "response_format"]

# Where a body carries the strict flag: (the parameter, the object in it holding
# "strict"). The request fingerprint leaves the flag out (it changes how the server
# decodes, not what is asked).
STRICT_KEYS = (("response_format", "json_schema"), ("text", "format"))


def response_format(schema: dict[str, Any], name: str, strict: bool) -> dict[str, Any]:
    """A chat ``response_format`` asking for `schema` under `name`; with ``strict: true``
    when `strict` (without the key otherwise, so a non-strict body is as it always was)."""
    spec: dict[str, Any] = {"name": name, "schema": schema}
    if strict:
        spec["strict"] = True
    return {"type": "json_schema", "json_schema": spec}
