"""The fake server's Files API, through the real openai SDK over loopback: what a user
of the API sees of uploads, lists and their pages, and the server's counters."""

from __future__ import annotations

import io
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

import openai
import orjson
import pytest
from openai.types import FileObject

from llmbatch.testing.server import FakeServer

CHAT = "/v1/chat/completions"


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


# --- files ---------------------------------------------------------------------------------


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


def test_the_files_endpoints_answer_without_the_v1_prefix_too(fake_server: Callable[..., FakeServer]) -> None:
    """/files as /v1/files: an empty list to begin with."""
    server = fake_server()
    root = server.base_url.removesuffix("/v1")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for path in ("/files", "/v1/files"):
        with opener.open(root + path, timeout=10) as resp:
            assert orjson.loads(resp.read()) == {
                "object": "list",
                "data": [],
                "has_more": False,
                "first_id": None,
                "last_id": None,
            }


async def test_the_files_endpoints_want_the_api_key(fake_server: Callable[..., FakeServer]) -> None:
    """With an API key set, a wrong one gets a 401 from the Files API too."""
    server = fake_server(api_key="sk-right")
    async with client(server) as sdk:
        with pytest.raises(openai.AuthenticationError):
            await upload(sdk, [line("a")])
    assert server.stats.uploads == 0
