"""The fake server's Files and Batch APIs, through the real openai SDK over loopback:
what a user of the API sees of uploads, batches, their result files, lists and their
pages, cancels, expiry, the enqueued-token limit, a create whose answer is lost, and the
server's counters."""

from __future__ import annotations

import asyncio
import io
import subprocess
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

import openai
import orjson
import pytest
from conftest import PYTHON
from openai.types import Batch, FileObject

from llmbatch.testing.server import FakeServer

TERMINAL = ("completed", "failed", "expired", "cancelled")
CHAT = "/v1/chat/completions"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def client(server: FakeServer) -> openai.AsyncOpenAI:
    """The SDK as llmbatch uses it: our retries, not the SDK's."""
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def body(text: str, model: str = "m") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def line(custom_id: str, text: str = "Say hello.", **fields: Any) -> dict[str, Any]:
    row = {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body(text)}
    return {**row, **fields}


def jsonl(rows: Iterable[Any]) -> bytes:
    return b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows)


async def upload(sdk: openai.AsyncOpenAI, rows: Iterable[Any], name: str = "in.jsonl") -> FileObject:
    return await sdk.files.create(file=(name, io.BytesIO(jsonl(rows)), "application/jsonl"), purpose="batch")


async def submit(
    sdk: openai.AsyncOpenAI, rows: Iterable[Any], endpoint: str = CHAT, **metadata: str
) -> Batch:
    uploaded = await upload(sdk, rows)
    return await sdk.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata=metadata or None,
    )


async def until(
    sdk: openai.AsyncOpenAI, batch_id: str, done: Callable[[Batch], bool] = lambda b: b.status in TERMINAL
) -> Batch:
    """Poll the batch until `done` says so (a guard of 20 s against a hang, not a timing)."""
    for _ in range(4000):
        batch = await sdk.batches.retrieve(batch_id)
        if done(batch):
            return batch
        await asyncio.sleep(0.005)
    raise AssertionError(f"batch {batch_id} never got there: {batch}")


async def records(sdk: openai.AsyncOpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    """A result file's lines by custom_id, downloaded as llmbatch does (streamed)."""
    assert file_id is not None
    async with sdk.files.with_streaming_response.content(file_id) as resp:
        data = b"".join([chunk async for chunk in resp.iter_bytes()])
    rows = [orjson.loads(raw) for raw in data.splitlines()]
    by_id = {r["custom_id"]: r for r in rows}
    assert len(by_id) == len(rows)  # one line per request
    return by_id


async def ask_live(server: FakeServer, request_body: dict[str, Any]) -> Any:
    """The live chat endpoint's answer to that body, sent as llmbatch sends it (orjson)."""
    request = urllib.request.Request(server.base_url + "/chat/completions", data=orjson.dumps(request_body))
    return await asyncio.to_thread(lambda: orjson.loads(OPENER.open(request, timeout=10).read()))


def text_of(record: dict[str, Any]) -> str:
    content: str = record["response"]["body"]["choices"][0]["message"]["content"]
    return content


# --- the whole round ---------------------------------------------------------------------


async def test_a_batch_runs_from_upload_to_result_files(fake_server: Callable[..., FakeServer]) -> None:
    """Upload, create, poll to completed: the answers are in the output file, a scripted
    400 in the error file with its status and OpenAI error body; the objects say what
    OpenAI's say."""
    server = fake_server()
    rows = [line("ok"), line("refused", '@fake {"fail": [400]}'), line("json", '@fake {"answer": {"a": 1}}')]
    async with client(server) as sdk:
        uploaded = await upload(sdk, rows)
        created = await sdk.batches.create(
            input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h", metadata={"run": "r1"}
        )
        assert created.id.startswith("batch_") and created.status == "validating"
        assert (created.endpoint, created.input_file_id, created.metadata) == (
            CHAT,
            uploaded.id,
            {"run": "r1"},
        )

        done = await until(sdk, created.id)
        assert done.status == "completed"
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (
            3,
            2,
            1,
        )
        assert done.in_progress_at and done.finalizing_at and done.completed_at and done.model == "m"
        assert done.usage is not None and done.usage.input_tokens > 0 and done.usage.output_tokens > 0

        output = await records(sdk, done.output_file_id)
        assert sorted(output) == ["json", "ok"]
        assert text_of(output["ok"]) == "echo: Say hello." and text_of(output["json"]) == '{"a":1}'
        for rec in output.values():
            assert rec["id"].startswith("batch_req_") and rec["error"] is None
            assert rec["response"]["status_code"] == 200 and rec["response"]["request_id"]
        errors = await records(sdk, done.error_file_id)
        assert list(errors) == ["refused"]
        refused = errors["refused"]
        assert refused["error"] is None and refused["response"]["status_code"] == 400
        assert refused["response"]["body"]["error"]["message"]

        result_file = await sdk.files.retrieve(done.output_file_id or "")
        assert result_file.purpose == "batch_output"
    assert (server.stats.uploads, server.stats.creates, server.stats.cancels) == (1, 1, 0)
    assert server.stats.answers == {"ok": 1, "refused": 1, "json": 1}
    assert server.stats.faults == {"400": 1}


async def test_in_progress_counts_move_at_the_scripted_pace(fake_server: Callable[..., FakeServer]) -> None:
    """A start delay and a pace: the batch is seen validating, then in progress with its
    completed count climbing one line at a time, then completed."""
    server = fake_server(batch_start_delay=0.05, batch_lines_per_second=40)
    async with client(server) as sdk:
        batch = await submit(sdk, [line(f"r{i}") for i in range(6)])
        seen = [(batch.status, 0)]
        while batch.status not in TERMINAL:
            batch = await sdk.batches.retrieve(batch.id)
            assert batch.request_counts is not None
            step = (batch.status, batch.request_counts.completed)
            if step != seen[-1]:
                seen.append(step)
            await asyncio.sleep(0.002)
    statuses = [status for status, _ in seen]
    assert statuses[0] == "validating" and statuses[-1] == "completed"
    assert "in_progress" in statuses
    counts = [n for status, n in seen if status == "in_progress"]
    assert counts == sorted(counts) and len(set(counts)) >= 3  # seen moving, never back
    assert seen[-1] == ("completed", 6)


async def test_scripts_play_out_across_follow_up_batches(fake_server: Callable[..., FakeServer]) -> None:
    """`bad` and `fail` scripts count per custom_id across batches, as across live
    re-asks: the follow-up batch of the same lines gets the good answers, and each item
    was answered exactly twice."""
    server = fake_server()
    rows = [
        line("bad", '@fake {"bad": 1, "answer": "fine"}'),
        line("flaky", '@fake {"fail": [500], "answer": "ok"}'),
    ]
    async with client(server) as sdk:
        first = await until(sdk, (await submit(sdk, rows)).id)
        assert text_of((await records(sdk, first.output_file_id))["bad"]).startswith("Sorry")
        assert (await records(sdk, first.error_file_id))["flaky"]["response"]["status_code"] == 500
        second = await until(sdk, (await submit(sdk, rows)).id)
        answers = await records(sdk, second.output_file_id)
        assert (text_of(answers["bad"]), text_of(answers["flaky"])) == ("fine", "ok")
        assert second.error_file_id is None  # nothing failed: no error file
    assert server.stats.answers == {"bad": 2, "flaky": 2}


async def test_a_live_reask_continues_a_batch_lines_count(fake_server: Callable[..., FakeServer]) -> None:
    """A batch line answered badly, then asked live with the same body (llmbatch's
    --then live): the live answer is the good one, counted among that custom_id's answers."""
    server = fake_server()
    row = line("item", '@fake {"bad": 1, "answer": "good"}')
    async with client(server) as sdk:
        done = await until(sdk, (await submit(sdk, [row])).id)
        assert text_of((await records(sdk, done.output_file_id))["item"]).startswith("Sorry")
        live = await ask_live(server, row["body"])
    assert live["choices"][0]["message"]["content"] == "good"
    assert server.stats.answers == {"item": 2}


async def test_a_batch_line_continues_what_its_body_was_answered_live(
    fake_server: Callable[..., FakeServer],
) -> None:
    """Asked live first (a bad answer), then in a batch: the batch gets the good answer,
    and the custom_id counts both."""
    server = fake_server()
    row = line("item", '@fake {"bad": 1, "answer": "good"}')
    live = await ask_live(server, row["body"])
    assert live["choices"][0]["message"]["content"].startswith("Sorry")
    async with client(server) as sdk:
        done = await until(sdk, (await submit(sdk, [row])).id)
        assert text_of((await records(sdk, done.output_file_id))["item"]) == "good"
    assert server.stats.answers == {"item": 2}


async def test_an_embeddings_batch(fake_server: Callable[..., FakeServer]) -> None:
    """/v1/embeddings batches answer with vectors, as the live endpoint does."""
    server = fake_server()
    rows = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "e", "input": f"t{i}"},
        }
        for i in range(3)
    ]
    async with client(server) as sdk:
        done = await until(sdk, (await submit(sdk, rows, endpoint="/v1/embeddings")).id)
        output = await records(sdk, done.output_file_id)
    assert done.status == "completed" and sorted(output) == ["e0", "e1", "e2"]
    assert len(output["e0"]["response"]["body"]["data"][0]["embedding"]) == 8


# --- refusals and failed batches ---------------------------------------------------------


async def test_a_bad_input_file_fails_its_batch_with_the_reasons(
    fake_server: Callable[..., FakeServer],
) -> None:
    """Every line checked as OpenAI checks them: the batch fails, errors.data names each
    bad line by number and code, and nothing runs."""
    server = fake_server()
    rows = [
        line("a"),
        line("a"),  # duplicate custom_id
        line("b", url="/v1/embeddings"),
        line("c", method="GET"),
        {"custom_id": "d", "method": "POST", "url": CHAT},
        b"{not json",
        {"method": "POST", "url": CHAT, "body": body("x")},
        {"custom_id": "e", "method": "POST", "url": CHAT, "body": body("x", model="other")},
    ]
    async with client(server) as sdk:
        done = await until(sdk, (await submit(sdk, rows)).id)
    assert done.status == "failed" and done.failed_at
    assert done.output_file_id is None and done.error_file_id is None
    assert done.errors is not None and done.errors.data is not None
    found = [(e.line, e.code) for e in done.errors.data]
    assert found == [
        (2, "duplicate_custom_id"),
        (3, "mismatched_endpoint"),
        (4, "invalid_method"),
        (5, "missing_required_parameter"),
        (6, "invalid_json_line"),
        (7, "missing_required_parameter"),
        (8, "mismatched_model"),
    ]
    assert server.stats.answers == {}


async def test_a_create_with_bad_parameters_is_refused(fake_server: Callable[..., FakeServer]) -> None:
    """An unknown file, a file not meant for batches, an endpoint the server cannot run,
    17 metadata pairs: 400s that make no batch."""
    server = fake_server()
    async with client(server) as sdk:
        good = await upload(sdk, [line("a")])
        other = await sdk.files.create(
            file=("notes.txt", io.BytesIO(b"x"), "text/plain"), purpose="user_data"
        )
        tries: list[dict[str, Any]] = [
            {"input_file_id": "file-nothere", "endpoint": CHAT},
            {"input_file_id": other.id, "endpoint": CHAT},
            {"input_file_id": good.id, "endpoint": "/v1/images/generations"},
            {"input_file_id": good.id, "endpoint": CHAT, "metadata": {f"k{i}": "v" for i in range(17)}},
        ]
        for params in tries:
            with pytest.raises(openai.BadRequestError):
                await sdk.batches.create(completion_window="24h", **params)
        with pytest.raises(openai.NotFoundError):
            await sdk.batches.retrieve("batch_nothere")
    assert server.stats.creates == 0 and server.batches.batches == {}


async def test_the_enqueued_token_limit_fails_the_batch_that_passes_it(
    fake_server: Callable[..., FakeServer],
) -> None:
    """With one batch in progress, a second of the same model whose tokens would pass
    the limit fails with token_limit_exceeded and OpenAI's message; one of another
    model runs, and once the first is done the same file runs too."""
    rows = [line(f"r{i}", "Tell me something about the weather today.") for i in range(4)]
    server = fake_server(batch_lines_per_second=20)
    async with client(server) as sdk:
        first = await submit(sdk, rows)
        tokens = (await until(sdk, first.id)).usage.input_tokens  # type: ignore[union-attr]
    limit = tokens + tokens // 2  # room for one batch of these, not two

    server = fake_server(batch_lines_per_second=20, enqueued_token_limit=limit)
    async with client(server) as sdk:
        running = await submit(sdk, rows)
        refused = await until(sdk, (await submit(sdk, rows)).id)
        assert refused.status == "failed" and refused.errors is not None and refused.errors.data
        error = refused.errors.data[0]
        assert error.code == "token_limit_exceeded" and error.message is not None
        assert "Enqueued token limit reached for m" in error.message
        assert f"Limit: {limit:,} enqueued tokens" in error.message
        other_model = [{**r, "body": body("Tell me something about the weather today.", "m2")} for r in rows]
        assert (await until(sdk, (await submit(sdk, other_model)).id)).status == "completed"
        assert (await until(sdk, running.id)).status == "completed"
        assert (await until(sdk, (await submit(sdk, rows)).id)).status == "completed"


# --- cancel and expiry --------------------------------------------------------------------


async def test_a_cancel_keeps_what_was_finished_and_marks_the_rest(
    fake_server: Callable[..., FakeServer],
) -> None:
    """Cancelled mid-run: cancelling at once, cancelled shortly after; the finished lines
    are in the output file, the others batch_cancelled in the error file; every line
    once; cancelling again is harmless, cancelling a completed batch is refused."""
    server = fake_server(batch_lines_per_second=50)
    async with client(server) as sdk:
        batch = await submit(sdk, [line(f"r{i}") for i in range(20)])
        await until(sdk, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 2)
        cancelling = await sdk.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        done = await until(sdk, batch.id)
        assert done.status == "cancelled" and done.cancelled_at
        assert (await sdk.batches.cancel(batch.id)).status == "cancelled"

        finished = await records(sdk, done.output_file_id)
        rest = await records(sdk, done.error_file_id)
        assert len(finished) >= 2 and len(rest) >= 1
        assert sorted(finished.keys() | rest.keys()) == sorted(f"r{i}" for i in range(20))
        assert not finished.keys() & rest.keys()
        assert all(r["response"] is None and r["error"]["code"] == "batch_cancelled" for r in rest.values())
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (len(finished), len(rest))

        completed = await until(sdk, (await submit(sdk, [line("x")])).id)
        with pytest.raises(openai.BadRequestError):
            await sdk.batches.cancel(completed.id)
    assert server.stats.cancels == 3
    assert set(server.stats.answers) == set(finished) | {"x"}


async def test_a_batch_expires_after_its_lines(fake_server: Callable[..., FakeServer]) -> None:
    """batch_expire_after=3: three lines answered, the other two batch_expired."""
    server = fake_server(batch_expire_after=3)
    async with client(server) as sdk:
        done = await until(sdk, (await submit(sdk, [line(f"r{i}") for i in range(5)])).id)
        finished = await records(sdk, done.output_file_id)
        expired = await records(sdk, done.error_file_id)
    assert done.status == "expired" and done.expired_at
    assert sorted(finished) == ["r0", "r1", "r2"] and sorted(expired) == ["r3", "r4"]
    assert all(r["response"] is None and r["error"]["code"] == "batch_expired" for r in expired.values())
    assert sorted(server.stats.answers) == ["r0", "r1", "r2"]


# --- a lost answer, lists and pages --------------------------------------------------------


async def test_a_lost_create_answer_leaves_a_batch_to_be_found(
    fake_server: Callable[..., FakeServer],
) -> None:
    """lose_create_answers=1: the first create makes its batch and the client gets a
    connection error; the batch is found by its metadata and runs; the next create is
    answered."""
    server = fake_server(lose_create_answers=1)
    async with client(server) as sdk:
        uploaded = await upload(sdk, [line("a")])
        with pytest.raises(openai.APIConnectionError):
            await sdk.batches.create(
                input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h", metadata={"chunk": "7"}
            )
        found = [b async for b in sdk.batches.list(limit=100) if (b.metadata or {}).get("chunk") == "7"]
        assert len(found) == 1
        assert (await until(sdk, found[0].id)).status == "completed"
        answered = await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        assert answered.id != found[0].id
    assert server.stats.creates == 2


async def test_an_upload_keeps_its_name_and_bytes(fake_server: Callable[..., FakeServer]) -> None:
    """The file object says what OpenAI's says; its content comes back byte for byte."""
    server = fake_server()
    rows = [line("a"), line("b")]
    async with client(server) as sdk:
        uploaded = await upload(sdk, rows, name="llmbatch-run-1.jsonl")
        assert (uploaded.filename, uploaded.purpose, uploaded.status) == (
            "llmbatch-run-1.jsonl",
            "batch",
            "processed",
        )
        assert uploaded.id.startswith("file-") and uploaded.bytes == len(jsonl(rows))
        assert (await sdk.files.retrieve(uploaded.id)).filename == "llmbatch-run-1.jsonl"
        async with sdk.files.with_streaming_response.content(uploaded.id) as resp:
            assert await resp.read() == jsonl(rows)
    assert server.stats.uploads == 1


async def test_batches_list_newest_first_across_pages(fake_server: Callable[..., FakeServer]) -> None:
    """Five batches, pages of two: has_more and the cursors lead the SDK through all
    five, newest first."""
    server = fake_server()
    async with client(server) as sdk:
        made = [(await submit(sdk, [line("a")])).id for _ in range(5)]
        first = await sdk.batches.list(limit=2)
        assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
        assert [b.id async for b in sdk.batches.list(limit=2)] == made[::-1]
        last = await sdk.batches.list(limit=2, after=made[1])
        assert [b.id for b in last.data] == [made[0]] and not last.has_more


async def test_files_list_filter_order_pages_and_delete(fake_server: Callable[..., FakeServer]) -> None:
    """Files list by purpose, newest first unless asked otherwise, in pages; a deleted
    file is gone."""
    server = fake_server()
    async with client(server) as sdk:
        made = [(await upload(sdk, [line(f"r{i}")], name=f"f{i}.jsonl")).id for i in range(4)]
        await sdk.files.create(file=("notes.txt", io.BytesIO(b"x"), "text/plain"), purpose="user_data")
        assert [f.id async for f in sdk.files.list(purpose="batch", limit=3)] == made[::-1]
        assert [f.id async for f in sdk.files.list(purpose="batch", order="asc")] == made
        assert len([f async for f in sdk.files.list()]) == 5
        deleted = await sdk.files.delete(made[0])
        assert deleted.deleted and deleted.id == made[0]
        with pytest.raises(openai.NotFoundError):
            await sdk.files.retrieve(made[0])
        assert [f.filename async for f in sdk.files.list(purpose="batch")] == [
            "f3.jsonl",
            "f2.jsonl",
            "f1.jsonl",
        ]
    assert server.stats.uploads == 5


def test_the_batch_endpoints_answer_without_the_v1_prefix_too(fake_server: Callable[..., FakeServer]) -> None:
    """/files and /batches, as /v1/files and /v1/batches: empty lists to begin with."""
    server = fake_server()
    root = server.base_url.removesuffix("/v1")
    for path in ("/files", "/batches", "/v1/files", "/v1/batches"):
        with OPENER.open(root + path, timeout=10) as resp:
            assert orjson.loads(resp.read()) == {
                "object": "list",
                "data": [],
                "has_more": False,
                "first_id": None,
                "last_id": None,
            }


async def test_the_batch_endpoints_want_the_api_key(fake_server: Callable[..., FakeServer]) -> None:
    """With an API key set, a wrong one gets a 401 from the Files and Batch APIs too."""
    server = fake_server(api_key="sk-right")
    async with client(server) as sdk:
        with pytest.raises(openai.AuthenticationError):
            await upload(sdk, [line("a")])
        with pytest.raises(openai.AuthenticationError):
            await sdk.batches.list()
    assert server.stats.uploads == 0


def test_the_command_line_takes_the_batch_options() -> None:
    """`--batch-expire-after`, `--lose-create-answers`, ...: a server of its own whose
    first create is lost and whose batches expire after one line."""
    argv = [PYTHON, "-m", "llmbatch.testing.server", "--port", "0", "--batch-expire-after", "1"]
    argv += ["--lose-create-answers", "1", "--batch-start-delay", "0", "--enqueued-token-limit", "100000"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().decode().split("listening on ", 1)[1].strip()
            sdk = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
            with sdk:
                data = io.BytesIO(jsonl([line("a"), line("b")]))
                uploaded = sdk.files.create(file=("in.jsonl", data, "application/jsonl"), purpose="batch")
                with pytest.raises(openai.APIConnectionError):
                    sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
                batch = sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
                for _ in range(2000):
                    batch = sdk.batches.retrieve(batch.id)
                    if batch.status in TERMINAL:
                        break
            assert batch.status == "expired"
            assert batch.request_counts is not None and batch.request_counts.completed == 1
        finally:
            proc.terminate()
