"""What llmbatch knows of one endpoint, as a class: the base every endpoint extends.

An endpoint is one place for everything that differs between the APIs llmbatch speaks:

- the request: the body a template fills (`from_text`), what a body must hold
  (`missing`), where ``--max-tokens`` and ``--schema`` go (`max_tokens_key`,
  `schema_params`), and what a re-ask sends (`reask`);
- the answer: its text (`text`), how it ended (`finish_reason`, `truncated`,
  `refusal`), its
  usage (`usage`), whether it is an answer at all (`unusable`), and what a merged row
  shows of it (`answer`, `columns`, and back: `body_of`);
- its size: what bounds the answer (`answer_ceiling`), how big the prompt is
  (`prompt_chars`, `prompt_tokens`, `prompt_bound`), read by the limits, the spending
  cap and `estimate` alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from llmbatch.core.attachments import Attachment, attachment_parts, part_tokens
from llmbatch.core.usage import Usage

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_ANSWER_TOKENS",
    "MESSAGE_FRAMING",
    "REASK_MESSAGE",
    "Endpoint",
    "reask_message",
    "text_chars",
    "tokens",
]

# Characters a chat message costs beyond its text: the role and the framing tokens.
MESSAGE_FRAMING = 16
# Characters per token before any usage calibrates it: a fair first guess for English.
CHARS_PER_TOKEN = 4.0
# The answer length expected of a request whose body does not bound it, before any
# answer has been seen (the token budget's charge, `estimate`'s guess).
DEFAULT_ANSWER_TOKENS = 256
# What a re-ask that carries the conversation (Responses, completions) tells the model;
# the fake server knows a re-ask by it.
REASK_MESSAGE = "That answer is not valid: {reason}. Answer again, in full."


def reask_message(reason: str) -> str:
    return REASK_MESSAGE.format(reason=reason)


def tokens(value: Any) -> int | None:
    """A token count given in a body: a positive number (a float is cut to an int);
    anything else (a bool, a string, 0, a negative) bounds nothing."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return int(value) if value >= 1 else None


def text_chars(value: Any) -> int:
    """Characters of text in a content value: a string, or a list of parts (strings or
    objects with a "text"); an attached image or PDF as the characters of the tokens it
    costs (:mod:`llmbatch.core.attachments`)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        n = 0
        for part in value:
            if isinstance(part, str):
                n += len(part)
            elif isinstance(part, dict):
                if isinstance(text := part.get("text"), str):
                    n += len(text)
                elif (attached := part_tokens(part)) is not None:
                    # An image or PDF counts what it is billed, not its base64.
                    n += int(attached * CHARS_PER_TOKEN)
        return n
    return 0


class Endpoint:
    """What llmbatch knows of one endpoint (see the module docstring).

    `ceiling_keys` name the body fields that bound the answer, the first one present
    winning; `max_tokens_key` is the one ``--max-tokens`` fills (None: the endpoint has
    no answer to bound, and the flag is refused); `line_max_tokens_key` the one it fills
    in a line that names this endpoint itself, in a file of several. An endpoint whose `answers` is False
    is billed no completion tokens (its ceiling is 0); one that is `free` is billed
    nothing. `prompt_keys` name the fields that carry the prompt. `bare_key` is the
    field that makes a bare body this endpoint's when ``--endpoint`` is not given.
    `text_answers` is False for answers the validators cannot read as text (vectors,
    moderation results): they get the usability check only; one that does not
    `takes_validators` refuses ``--validate`` and ``--schema`` outright;
    `default_max_tokens` fills `max_tokens_key` when nothing else does."""

    path: str = ""
    name: str = ""
    ceiling_keys: tuple[str, ...] = ()
    max_tokens_key: str | None = None
    prompt_keys: tuple[str, ...] = ()
    answers: bool = True
    free: bool = False
    bare_key: str | None = None
    text_answers: bool = True
    takes_validators: bool = True
    # Whether `attach` puts images and PDFs in its body (--attach): chat's, the
    # Responses API's and the Messages API's (image and document blocks) do.
    takes_attachments: bool = False
    # The ceiling a body gets when neither it nor --max-tokens gives one: for an API
    # that refuses a request without (Anthropic's); None: the body goes without.
    default_max_tokens: int | None = None

    # --- the request ---------------------------------------------------------------

    @property
    def line_max_tokens_key(self) -> str | None:
        return self.max_tokens_key

    def from_text(self, text: str, system: str | None) -> dict[str, Any]:
        """The body a filled-in template asks (``--system`` too, where it has a place)."""
        raise NotImplementedError

    def missing(self, body: Mapping[str, Any]) -> str | None:
        """What the body lacks to be a request of this endpoint, or None."""
        key = self.prompt_keys[0]
        return None if key in body else f'{self.name} request without "{key}"'

    def schema_params(self, response_format: dict[str, Any]) -> dict[str, Any]:
        """The body fields that ask for a structured answer, given chat's
        ``response_format`` (`llmbatch.core.structured.response_format`); {} where the
        endpoint has none (the answers are still validated)."""
        return {}

    def reask(self, body: Mapping[str, Any], answer: str | None, reason: str) -> dict[str, Any] | None:
        """The body of a re-ask after an invalid `answer`; None: the same body again."""
        return None

    def reask_after(
        self, body: Mapping[str, Any], answer_body: Any, answer: str | None, reason: str
    ) -> dict[str, Any] | None:
        """`reask` for an endpoint whose re-ask needs the whole answer (`answer_body`:
        the Messages API's tool_use id); the others' is `reask`'s."""
        return self.reask(body, answer, reason)

    def attach(self, body: dict[str, Any], attachments: Sequence[Attachment]) -> dict[str, Any]:
        """The body a template filled, carrying `attachments` (images, PDFs) as content
        parts after the prompt's text. Raises ValueError saying what this endpoint cannot
        take: here, anything (chat, the Responses API and the Messages API take attachments)."""
        raise ValueError(f"--attach: {self.path} takes no attachments (chat, responses and messages do)")

    # --- the answer ----------------------------------------------------------------

    def text(self, body: Any) -> str | None:
        """The answer's text, or None when it has none."""
        return None

    def finish_reason(self, body: Any) -> str | None:
        return None

    def truncated(self, body: Any) -> bool:
        """Whether the answer was cut off by its ceiling."""
        return False

    def refusal(self, body: Any) -> str | None:
        """The model's refusal when it declined to answer, or None."""
        return None

    # Chat's usage (prompt_tokens, completion_tokens and their details), which
    # completions and embeddings share: the class method itself, no call in between.
    usage = staticmethod(Usage.from_body)

    # What `unusable` says of a body without the text `text` reads.
    no_text = "response has no content"

    def unusable(self, body: Any, require_finish: str | None) -> str | None:
        """Why the answer is not an answer at all (before any validator), or None: not
        JSON, an error object in its place, the wrong finish reason, no text."""
        if not isinstance(body, dict):
            return "response body is not JSON"
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return f"response failed (error: {error['message']})"
        if require_finish is not None and (finish := self.finish_reason(body)) != require_finish:
            return f"finish_reason was {finish!r}, expected {require_finish!r}"
        if self.text(body) is None:
            return self.no_text
        return None

    def answer(self, body: Any) -> Any:
        """What a merged row shows as ``llm_answer``."""
        return self.text(body)

    def columns(self, body: Any) -> dict[str, Any]:
        """Columns a merged row carries beyond the common ones ({}: none)."""
        return {}

    def body_of(self, answer: Any, finish_reason: str | None) -> Any | None:
        """A body holding a merged row's `answer` again (for --revalidate); None when the
        row holds none."""
        return None

    # --- sizes -----------------------------------------------------------------------

    def answer_ceiling(self, body: Mapping[str, Any]) -> int | None:
        """The most completion tokens the request can be billed for: 0 when the
        endpoint answers none, None when nothing in the body bounds it."""
        if not self.answers:
            return 0
        for key in self.ceiling_keys:
            value = body.get(key)
            if value is not None:
                return tokens(value)
        return None

    def prompt_chars(self, body: Mapping[str, Any]) -> int:
        """Characters of prompt text (what the token estimate divides)."""
        return sum(text_chars(body.get(key)) for key in self.prompt_keys)

    def prompt_tokens(self, body: Mapping[str, Any]) -> int:
        """The prompt's tokens, guessed from its characters (no tokenizer)."""
        return int(self.prompt_chars(body) / CHARS_PER_TOKEN) + 1

    def prompt_bound(self, body: Mapping[str, Any]) -> int:
        """An upper bound on the prompt's tokens: the UTF-8 bytes of what carries it
        (a token is at least a byte); an attached image or PDF counts the tokens it
        costs instead of its bytes."""
        n = 0
        for key in self.prompt_keys:
            value = body.get(key)
            if value is not None:
                n += len(orjson.dumps(value))
                for part in attachment_parts(value):
                    n += (part_tokens(part) or 0) - len(orjson.dumps(part))
        return n

    def __repr__(self) -> str:
        return f"<endpoint {self.path}>"
