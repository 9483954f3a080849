"""Each endpoint's class on its own: what a template fills, where --max-tokens and
--schema go, the answer text, finish and usage, a re-ask's body, the merged row's
columns; and how the request builder picks a line's endpoint."""

from __future__ import annotations

from typing import Any

import pytest

from llmbatch.core.endpoints import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    ENDPOINTS,
    MODERATIONS,
    RESPONSES,
    bare_endpoint,
    normalise_endpoint,
)
from llmbatch.core.errors import InputError
from llmbatch.core.usage import Usage
from llmbatch.core.values import Completion
from llmbatch.input.build import RequestBuilder, Template

chat, embeddings, responses, completions, moderations = (
    ENDPOINTS[p] for p in (CHAT, EMBEDDINGS, RESPONSES, COMPLETIONS, MODERATIONS)
)
FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "review", "schema": {"type": "object"}, "strict": True},
}


def response(*parts: dict[str, Any], status: str = "completed", reason: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "object": "response",
        "status": status,
        "output": [
            {"type": "reasoning", "summary": []},
            {"type": "message", "role": "assistant", "content": list(parts)},
        ],
        "usage": {
            "input_tokens": 120,
            "input_tokens_details": {"cached_tokens": 100},
            "output_tokens": 50,
            "output_tokens_details": {"reasoning_tokens": 30},
            "total_tokens": 170,
        },
    }
    if reason:
        body["incomplete_details"] = {"reason": reason}
    return body


def test_chat_reads_the_first_choice_and_its_usage() -> None:
    """Chat: the first choice's content, finish reason, `length` as truncation, usage
    with cached and reasoning details; a re-ask is the same request."""
    body = {
        "choices": [{"message": {"content": "hi"}, "finish_reason": "length"}],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 3},
        },
    }
    assert (chat.text(body), chat.finish_reason(body), chat.truncated(body)) == ("hi", "length", True)
    assert chat.usage(body) == Usage(10, 7, 4, 3)
    assert chat.unusable({"choices": []}, None) == "response has no choices"
    assert chat.unusable(body, "stop") == "finish_reason was 'length', expected 'stop'"
    assert chat.reask({"messages": []}, "hi", "bad") is None
    assert chat.from_text("Q", "S") == {
        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    }
    assert chat.schema_params(FORMAT) == {"response_format": FORMAT}
    assert chat.text(chat.body_of("again", "stop")) == "again"


def test_responses_joins_output_text_and_maps_usage() -> None:
    """Responses: the output_text parts joined (a refusal part is no text), completed is
    `stop`, incomplete says its reason, input/output tokens are prompt/completion with
    their cached and reasoning details."""
    body = response({"type": "output_text", "text": '{"a": '}, {"type": "output_text", "text": "1}"})
    assert responses.text(body) == '{"a": 1}'
    assert responses.finish_reason(body) == "stop" and not responses.truncated(body)
    assert responses.usage(body) == Usage(120, 50, 100, 30)
    cut = response({"type": "output_text", "text": "{"}, status="incomplete", reason="max_output_tokens")
    assert responses.finish_reason(cut) == "incomplete: max_output_tokens" and responses.truncated(cut)
    assert (
        responses.unusable(cut, "stop")
        == "finish_reason was 'incomplete: max_output_tokens', expected 'stop'"
    )
    refused = response({"type": "refusal", "refusal": "I can't."})
    assert responses.text(refused) is None
    assert responses.unusable(refused, None) == "response has no output text"
    empty = response(status="incomplete", reason="max_output_tokens")
    assert responses.unusable(empty, None) == "response has no output text (incomplete: max_output_tokens)"
    again = responses.body_of("x", "incomplete: content_filter")
    assert responses.text(again) == "x" and responses.finish_reason(again) == "incomplete: content_filter"
    completion = Completion(body=body, endpoint=responses)
    assert completion.text == '{"a": 1}' and completion.finish_reason == "stop"


def test_responses_request_shape_and_reask() -> None:
    """A template fills input (--system: instructions), --max-tokens is
    max_output_tokens, --schema goes to text.format (strict carried along); a re-ask
    turns a string input into a list and appends the answer and the reason."""
    assert responses.from_text("Q", "S") == {"input": "Q", "instructions": "S"}
    assert responses.max_tokens_key == "max_output_tokens"
    assert responses.answer_ceiling({"max_output_tokens": 64, "max_tokens": 5}) == 64
    fmt = {"type": "json_schema", "name": "review", "schema": {"type": "object"}, "strict": True}
    assert responses.schema_params(FORMAT) == {"text": {"format": fmt}}
    body = {"model": "m", "input": "Q", "text": {"format": fmt}}
    first = responses.reask(body, "oops", "answer is not JSON")
    assert first is not None and body["input"] == "Q"  # the original is left alone
    assert first["input"] == [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "oops"},
        {"role": "user", "content": "That answer is not valid: answer is not JSON. Answer again, in full."},
    ]
    assert first["text"] == body["text"] and first["model"] == "m"
    second = responses.reask(first, None, "still bad")
    assert second is not None and len(second["input"]) == 4 and second["input"][:3] == first["input"]
    assert responses.prompt_chars({"instructions": "abcd", "input": "efgh"}) == 8
    assert responses.prompt_chars(first) > responses.prompt_chars(body)


def test_completions_text_and_a_reask_appended_to_the_prompt() -> None:
    """Completions: choices[0].text; a re-ask appends the answer, a blank line, the
    reason and a blank line to a string prompt; a list prompt is asked again as is."""
    body = {"choices": [{"text": " world", "finish_reason": "stop"}], "usage": {"prompt_tokens": 3}}
    assert completions.text(body) == " world" and completions.usage(body) == Usage(3, 0)
    assert completions.from_text("Q", "S") == {"prompt": "S\n\nQ"}
    again = completions.reask({"prompt": "Say:", "max_tokens": 9}, " x", "too short")
    assert again == {
        "prompt": "Say: x\n\nThat answer is not valid: too short. Answer again, in full.\n\n",
        "max_tokens": 9,
    }
    assert completions.reask({"prompt": ["a", "b"]}, "x", "r") is None
    assert completions.unusable({"choices": [{"finish_reason": "stop"}]}, None) == "response has no content"


def test_moderations_are_free_and_show_flagged_and_the_categories() -> None:
    """Moderations: the answer is the result list, merged rows get llm_flagged and the
    categories flagged; no usage, no ceiling, no cost, no validators."""
    results = [
        {
            "flagged": True,
            "categories": {"hate": False, "violence": True},
            "category_scores": {"violence": 0.9},
        },
        {"flagged": False, "categories": {"hate": False, "violence": False}, "category_scores": {}},
    ]
    body = {"id": "modr-1", "results": results, "usage": {"prompt_tokens": 5}}
    assert moderations.answer(body) == results
    assert moderations.columns(body) == {"llm_flagged": True, "llm_categories": ["violence"]}
    assert moderations.usage(body) == Usage()
    assert moderations.answer_ceiling({"max_tokens": 9}) == 0 and moderations.free
    assert not moderations.takes_validators and moderations.max_tokens_key is None
    assert moderations.unusable({"results": []}, None) == "response has no moderation results"
    assert moderations.body_of(results, None) == {"results": results}


def test_embeddings_answer_is_the_vectors() -> None:
    """Embeddings: one input's vector, several inputs' vectors; read back from a merged row."""
    one = {"object": "list", "data": [{"embedding": [0.1, 0.2]}]}
    assert embeddings.answer(one) == [0.1, 0.2]
    assert embeddings.answer(embeddings.body_of([[1.0], [2.0]], None)) == [[1.0], [2.0]]
    assert embeddings.max_tokens_key is None and embeddings.answer_ceiling({}) == 0


def test_a_bare_body_is_told_by_its_keys_and_endpoints_by_their_short_names() -> None:
    """messages chat, prompt completions, input embeddings (messages first); an
    endpoint may be named without /v1 or its slash."""
    assert bare_endpoint({"messages": [], "input": "x"}) is chat
    assert bare_endpoint({"prompt": "x", "input": "y"}) is completions
    assert bare_endpoint({"input": "x"}) is embeddings
    assert bare_endpoint({"text": "x"}) is None
    assert normalise_endpoint("responses") == RESPONSES
    assert normalise_endpoint("/moderations") == MODERATIONS
    assert normalise_endpoint("/v1/images") is None


def builder(**kwargs: Any) -> RequestBuilder:
    return RequestBuilder(model="m", **kwargs)


def test_the_builder_puts_the_flags_where_each_endpoint_takes_them() -> None:
    """--max-tokens and --schema per line's endpoint: a Batch file of several endpoints
    gets them where each takes them (embeddings lines max_tokens as they always did,
    moderations none); a run whose --endpoint has no ceiling refuses --max-tokens."""
    b = builder(max_tokens=50, schema=FORMAT)
    lines = {
        url: b.build(1, {"custom_id": url, "url": url, "body": body})
        for url, body in [
            (CHAT, {"messages": []}),
            (RESPONSES, {"input": "q"}),
            (COMPLETIONS, {"prompt": "q"}),
            (EMBEDDINGS, {"input": "q"}),
            (MODERATIONS, {"input": "q"}),
        ]
    }
    assert lines[CHAT].body["max_tokens"] == 50 and lines[CHAT].body["response_format"] == FORMAT
    assert lines[RESPONSES].body["max_output_tokens"] == 50 and "max_tokens" not in lines[RESPONSES].body
    assert lines[RESPONSES].body["text"]["format"]["name"] == "review"
    assert lines[COMPLETIONS].body["max_tokens"] == 50 and "response_format" not in lines[COMPLETIONS].body
    assert lines[EMBEDDINGS].body["max_tokens"] == 50
    assert "max_tokens" not in lines[MODERATIONS].body and "response_format" not in lines[MODERATIONS].body
    with pytest.raises(InputError, match="--max-tokens has no meaning for /v1/moderations") as err:
        builder(max_tokens=5, endpoint=MODERATIONS, template=Template("{t}")).build(1, {"t": "x"})
    assert err.value.kind == "no_max_tokens"
    with pytest.raises(InputError, match="--validate and --schema do not apply"):
        builder(validating=True, endpoint=MODERATIONS).build(1, {"input": "x"})


def test_a_body_that_is_not_an_embeddings_request_needs_its_endpoint() -> None:
    """A bare body with input and Responses keys is refused without --endpoint (the
    reject says to give it), and built for the Responses API with it."""
    body = {"id": "r1", "input": "Say hi", "instructions": "Be brief."}
    with pytest.raises(InputError, match="give --endpoint /v1/responses") as err:
        builder().build(1, body)
    assert err.value.kind == "bare_endpoint"
    with pytest.raises(InputError, match="with the model 'omni-moderation-latest' is not an embeddings"):
        RequestBuilder().build(1, {"model": "omni-moderation-latest", "input": "x"})
    assert builder().build(1, {"input": "x", "truncate_prompt_tokens": 9}).url == EMBEDDINGS  # vLLM's
    req = builder(endpoint=RESPONSES).build(1, body)
    assert (req.url, req.custom_id, req.body) == (
        RESPONSES,
        "r1",
        {"input": "Say hi", "instructions": "Be brief.", "model": "m"},
    )
    with pytest.raises(InputError, match='responses request without "input"'):
        builder(endpoint=RESPONSES).build(1, {"messages": []})
