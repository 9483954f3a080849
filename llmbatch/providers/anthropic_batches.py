"""Anthropic's Message Batches behind the Batch API mode's seams (the calls
:class:`~llmbatch.providers.openai_batches.RemoteBatches` makes for OpenAI): the mode
runs unchanged, its intent-before-every-call record included.

What differs, and where it is met here:

- No files: a batch's requests go inline in its create. The mode's "upload" writes the
  chunk's lines to a spool file beside the output (complete or absent: written under a
  temporary name, then renamed), and the create streams that file as the body of one
  ``POST /v1/messages/batches`` (up to 256 MB), never holding it in memory.
- custom_ids: Anthropic takes 1 to 64 characters of ``[a-zA-Z0-9_-]``. Any other id is
  sent as ``h_`` and a hash of it (deterministic; ids that begin with ``h_`` are hashed
  too, so no id can pass for another's hash), and mapped back when results are read:
  the spool files, written before each create, are the mapping.
- No metadata: before each create the intent (the request count, the time) is written
  beside the spool file. A create whose answer was lost (or a run killed right after
  it) is found in the batch list: created after the intent, holding that many requests,
  not another chunk's batch. Where more than one remains, they are waited on until they
  end and matched by their custom_ids; nothing is created while a create is uncertain.
- Results: the ``results`` JSONL (``succeeded``, ``errored``, ``canceled``,
  ``expired``) is turned into the OpenAI Batch output lines the collector reads: an
  answer as a 200 response, an ``invalid_request_error`` as a 400 (the request's fault),
  any other error as a 500 (a follow-up asks again), expired and canceled as never run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

import orjson

from llmbatch.core.errors import TransientError
from llmbatch.core.http import error_for_status
from llmbatch.providers.anthropic import AnthropicProvider
from llmbatch.providers.openai_batches import CONTROL_RETRY, Remote

__all__ = ["DEFAULT_MESSAGE_BATCH_BYTES", "DEFAULT_MESSAGE_BATCH_REQUESTS", "AnthropicBatches", "batch_id_of"]

# Anthropic's limits for one Message Batch.
DEFAULT_MESSAGE_BATCH_REQUESTS = 100_000
DEFAULT_MESSAGE_BATCH_BYTES = 256_000_000
BATCHES = "/v1/messages/batches"
_ALLOWED = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_HASHED = "h_"
# The server's clock and ours may differ by this much: a batch created this long before
# the intent may still be its.
CLOCK_SKEW = 5.0
# While two or more batches could be an uncertain create's, look at them this often.
UNCERTAIN_POLL = 2.0
_JSON = {"content-type": "application/json"}
_STATUS = {"in_progress": "in_progress", "canceling": "cancelling", "ended": "completed"}


def batch_id_of(custom_id: str) -> str:
    """The custom_id Anthropic is sent for `custom_id`: itself when it may be, else ``h_``
    and 40 hex digits of its hash."""
    if _ALLOWED.fullmatch(custom_id) and not custom_id.startswith(_HASHED):
        return custom_id
    return _HASHED + hashlib.blake2b(custom_id.encode(), digest_size=20).hexdigest()


def _time(text: Any) -> float:
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _remote(batch: dict[str, Any]) -> Remote:
    counts = batch.get("request_counts") or {}
    total = sum(int(v or 0) for v in counts.values())
    failed = sum(int(counts.get(k) or 0) for k in ("errored", "expired", "canceled"))
    status = _STATUS.get(str(batch.get("processing_status")), str(batch.get("processing_status")))
    ended = status == "completed"
    return Remote(
        id=str(batch["id"]),
        status=status,
        total=total,
        completed=int(counts.get("succeeded") or 0),
        failed=failed,
        output_file_id=str(batch["id"]) if ended else None,
    )


class AnthropicBatches:
    """Message Batches for the Batch API mode (see the module docstring). `spool` is the
    folder beside the output the requests wait in; `claimed` says which batch ids the
    run's record holds already (no uncertain create is matched to one of those)."""

    def __init__(
        self,
        provider: AnthropicProvider,
        *,
        spool: Path,
        claimed: Callable[[], set[str]] = set,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.provider = provider
        self.spool = spool
        self.claimed = claimed
        self.log = log
        self._back: dict[str, str] = {}  # hashed id -> the id it stands for

    # --- the calls the mode makes --------------------------------------------------------

    async def upload(self, name: str, data: IO[bytes]) -> str:
        """The chunk's lines into its spool file (whole, or not there at all)."""
        self.spool.mkdir(parents=True, exist_ok=True)
        path = self.spool / name
        part = path.with_suffix(".part")
        data.seek(0)
        with part.open("wb") as f:
            while block := data.read(1 << 20):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        part.replace(path)
        return name

    async def find_file(self, name: str) -> str | None:
        return name if (self.spool / name).is_file() else None

    async def create(self, file_id: str, endpoint: str, metadata: dict[str, str]) -> Remote:
        """One create, its intent written first; a create whose answer is lost is looked
        for (`find_batch`) before it is sent again."""
        path = self.spool / file_id
        with path.open("rb") as f:
            count = sum(1 for _ in f)
        intent = {"requests": count, "time": time.time()}
        self._intent_path(file_id).write_bytes(orjson.dumps(intent))
        for attempt in range(CONTROL_RETRY.retries + 1):
            try:
                status, raw, headers = await self.provider.call(
                    "POST", BATCHES, data=self._body(path), headers=_JSON, timeout=None
                )
                if status >= 300:
                    raise error_for_status(status, raw, headers)
                return _remote(orjson.loads(raw))
            except TransientError as err:
                if not CONTROL_RETRY.allows(attempt):
                    raise
                wait = CONTROL_RETRY.wait(err, attempt + 1).seconds
                self.log(f"creating a batch: {err}; looking for it, then trying again in {wait:.0f}s")
                await asyncio.sleep(wait)
                found = await self.find_batch(metadata)
                if found is not None:
                    return found
        raise AssertionError("unreachable")

    async def find_batch(self, metadata: dict[str, str]) -> Remote | None:
        """The batch an uncertain create made, by its intent (see the module docstring);
        None when none was made (the create may go again)."""
        name = f"llmbatch-{metadata['llmbatch_run']}-{metadata['llmbatch_chunk']}.jsonl"
        try:
            intent = orjson.loads(self._intent_path(name).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None  # no intent written: the create was never sent
        while True:
            claimed = self.claimed()
            found = [
                b
                async for b in self._list()
                if _time(b.get("created_at")) >= intent["time"] - CLOCK_SKEW
                and b["id"] not in claimed
                and sum(int(v or 0) for v in (b.get("request_counts") or {}).values()) == intent["requests"]
            ]
            if len(found) <= 1:
                return _remote(found[0]) if found else None
            if all(b.get("processing_status") == "ended" for b in found):
                ids = {batch_id_of(cid) for cid in self._ids(self.spool / name)}
                for b in found:
                    async for line in self._result_lines(str(b["id"])):
                        if orjson.loads(line).get("custom_id") in ids:
                            return _remote(b)
                        break
                return None
            self.log(
                f"{len(found)} batches could be chunk {metadata['llmbatch_chunk']}'s: waiting for them to end"
            )
            await asyncio.sleep(UNCERTAIN_POLL)

    async def retrieve(self, batch_id: str) -> Remote:
        return _remote(await self._json("GET", f"{BATCHES}/{batch_id}"))

    async def cancel(self, batch_id: str) -> Remote:
        return _remote(await self._json("POST", f"{BATCHES}/{batch_id}/cancel"))

    async def download(self, file_id: str, dest: IO[bytes]) -> None:
        """The batch's results as OpenAI Batch output lines (the collector's reading)."""
        dest.seek(0)
        dest.truncate()
        async for line in self._result_lines(file_id):
            rec = orjson.loads(line)
            dest.write(orjson.dumps(self._as_output(rec), option=orjson.OPT_APPEND_NEWLINE))
        dest.flush()

    # --- the rest ------------------------------------------------------------------------

    def _intent_path(self, name: str) -> Path:
        return self.spool / (name + ".intent")

    @staticmethod
    def _ids(path: Path) -> list[str]:
        with path.open("rb") as f:
            return [orjson.loads(raw)["custom_id"] for raw in f]

    async def _body(self, path: Path) -> AsyncIterator[bytes]:
        """The create's body, streamed from the spool: ``{"requests": [...]}``."""
        yield b'{"requests":['
        with path.open("rb") as f:
            for i, raw in enumerate(f):
                line = orjson.loads(raw)
                cid = line["custom_id"]
                req = {"custom_id": batch_id_of(cid), "params": line["body"]}
                yield (b"," if i else b"") + orjson.dumps(req)
                if i % 1000 == 999:
                    await asyncio.sleep(0)
        yield b"]}"

    async def _json(self, method: str, path: str) -> dict[str, Any]:
        for attempt in range(CONTROL_RETRY.retries + 1):
            try:
                status, raw, headers = await self.provider.call(method, path)
                if status >= 300:
                    raise error_for_status(status, raw, headers)
                found: dict[str, Any] = orjson.loads(raw)
                return found
            except TransientError as err:
                if not CONTROL_RETRY.allows(attempt):
                    raise
                wait = CONTROL_RETRY.wait(err, attempt + 1).seconds
                self.log(f"{method} {path}: {err}; trying again in {wait:.0f}s")
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _list(self) -> AsyncIterator[dict[str, Any]]:
        """The batch list, newest first, as far back as a day before now."""
        after: str | None = None
        while True:
            query = "?limit=100" + (f"&after_id={after}" if after else "")
            page = await self._json("GET", BATCHES + query)
            for batch in page.get("data") or ():
                if _time(batch.get("created_at")) < time.time() - 86_400:
                    return
                yield batch
            if not page.get("has_more") or not page.get("last_id"):
                return
            after = str(page["last_id"])

    async def _result_lines(self, batch_id: str) -> AsyncIterator[bytes]:
        """The results JSONL, a line at a time, streamed."""
        session = self.provider.session
        async with session.get(f"{self.provider.root}{BATCHES}/{batch_id}/results") as resp:
            if resp.status >= 300:
                raise error_for_status(resp.status, await resp.read(), resp.headers)
            async for raw in resp.content:
                if raw.strip():
                    yield raw

    def _original(self, sent: str) -> str:
        if not sent.startswith(_HASHED):
            return sent
        if sent not in self._back:
            for path in self.spool.glob("*.jsonl"):
                for cid in self._ids(path):
                    if (hashed := batch_id_of(cid)) != cid:
                        self._back[hashed] = cid
        return self._back.get(sent, sent)

    def _as_output(self, rec: dict[str, Any]) -> dict[str, Any]:
        cid = self._original(str(rec.get("custom_id")))
        result = rec.get("result") or {}
        kind = result.get("type")
        if kind == "succeeded":
            message = result.get("message") or {}
            response = {"status_code": 200, "request_id": message.get("id"), "body": message}
            return {"custom_id": cid, "response": response, "error": None}
        if kind in ("expired", "canceled"):
            code = "batch_expired" if kind == "expired" else "batch_cancelled"
            return {"custom_id": cid, "response": None, "error": {"code": code, "message": kind}}
        error = (result.get("error") or {}).get("error") or {}
        status = 400 if error.get("type") == "invalid_request_error" else 500
        body = {"type": "error", "error": error}
        return {"custom_id": cid, "response": {"status_code": status, "body": body}, "error": None}
