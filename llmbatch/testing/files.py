"""The fake server's Files API, as the Batch API uses it: ``POST /v1/files`` (a
multipart upload of ``file`` and ``purpose``), ``GET /v1/files`` (a list page, filtered by
``purpose``, ``order``ed by creation), ``GET /v1/files/{id}``, ``GET
/v1/files/{id}/content`` and ``DELETE /v1/files/{id}``. Files live in memory, byte for
byte as uploaded; the batches' output and error files are kept here too."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import BodyPartReader, MultipartReader, StreamReader, web

from llmbatch.testing.api import ApiError, Reply, new_id, page, query_int
from llmbatch.testing.counts import ServerStats

__all__ = ["OUTPUT_PURPOSE", "PURPOSES", "FileStore", "StoredFile"]

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
OUTPUT_PURPOSE = "batch_output"  # the purpose of the files a batch writes
MAX_LIST = 10_000  # OpenAI's largest (and default) page of files


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def as_object(self) -> dict[str, Any]:
        """The file object as OpenAI returns it."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class FileStore:
    """The files, in the order they were made, and the endpoints that serve them."""

    def __init__(self, stats: ServerStats, reply: Reply) -> None:
        self.stats = stats
        self.reply = reply
        self.files: dict[str, StoredFile] = {}

    def add(self, filename: str, purpose: str, content: bytes) -> StoredFile:
        stored = StoredFile(new_id("file-"), filename, purpose, content, int(time.time()))
        self.files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return stored

    def routes(self, prefix: str) -> list[web.RouteDef]:
        return [
            web.post(f"{prefix}/files", self._upload),
            web.get(f"{prefix}/files", self._list),
            web.get(f"{prefix}/files/{{file_id}}", self._retrieve),
            web.delete(f"{prefix}/files/{{file_id}}", self._delete),
            web.get(f"{prefix}/files/{{file_id}}/content", self._content),
        ]

    def _json(self, obj: dict[str, Any]) -> web.Response:
        return self.reply(200, orjson.dumps(obj))

    async def _upload(self, request: web.Request) -> web.Response:
        fields = await _form(request)
        purpose = fields.get("purpose")
        if purpose is None or "file" not in fields:
            missing = "purpose" if purpose is None else "file"
            raise ApiError(400, f"'{missing}' is a required property", param=missing)
        if purpose[1].decode(errors="replace") not in PURPOSES:
            raise ApiError(400, f"Invalid 'purpose': expected one of {', '.join(PURPOSES)}.", param="purpose")
        filename, content = fields["file"]
        self.stats.uploads += 1
        stored = self.add(filename or "upload", purpose[1].decode(), content)
        return self._json(stored.as_object())

    async def _list(self, request: web.Request) -> web.Response:
        purpose = request.query.get("purpose")
        order = request.query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, "Invalid 'order': expected 'asc' or 'desc'.", param="order")
        limit = query_int(request, "limit", MAX_LIST, 1, MAX_LIST)
        files = [f.as_object() for f in self.files.values() if purpose is None or f.purpose == purpose]
        if order == "desc":
            files.reverse()
        return self._json(page(files, limit=limit, after=request.query.get("after")))

    async def _retrieve(self, request: web.Request) -> web.Response:
        return self._json(self.get(request.match_info["file_id"]).as_object())

    async def _content(self, request: web.Request) -> web.Response:
        stored = self.get(request.match_info["file_id"])
        return self.reply(200, stored.content, content_type="application/octet-stream")

    async def _delete(self, request: web.Request) -> web.Response:
        stored = self.get(request.match_info["file_id"])
        del self.files[stored.id]
        return self._json({"id": stored.id, "object": "file", "deleted": True})


async def _form(request: web.Request) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body's fields: name -> (filename, bytes).

    Read from ``request.read()``, not from the stream, so that a test's
    :meth:`~llmbatch.testing.server.FakeServer.handle` may have read the body first."""
    if request.content_type != "multipart/form-data":
        raise ApiError(400, "Expected a multipart/form-data body with 'file' and 'purpose'.")
    raw = await request.read()
    # A stream that holds the whole body at once: below its high-water mark it never
    # asks the connection to pause.
    stream = StreamReader(request.protocol, limit=max(len(raw), 1 << 16), loop=asyncio.get_running_loop())
    stream.feed_data(raw)
    stream.feed_eof()
    fields: dict[str, tuple[str | None, bytes]] = {}
    try:
        async for part in MultipartReader(request.headers, stream):
            if isinstance(part, BodyPartReader) and part.name is not None:
                fields[part.name] = (part.filename, bytes(await part.read(decode=True)))
    except (ValueError, AssertionError) as exc:
        raise ApiError(400, f"Malformed multipart body: {exc}") from None
    return fields
