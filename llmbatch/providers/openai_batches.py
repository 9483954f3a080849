"""The provider's Batch API through the openai SDK: files up, batches created,
retrieved, listed and cancelled, result files down. The edge: the SDK's exceptions are
translated into ours here, transient ones retried; a create or an upload whose answer
is lost is looked for (by the batch's metadata, the file's name) before it is tried
again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, Any, Literal, Protocol

import openai

from llmbatch.core.errors import ProviderError, TransientError
from llmbatch.core.retry import BackoffStrategy, RetryConfig
from llmbatch.providers.openai_errors import redact, secret_of, translate

__all__ = ["COMPLETION_WINDOW", "BatchAPI", "Remote", "RemoteBatches"]

COMPLETION_WINDOW: Literal["24h"] = "24h"
# Control-plane calls (upload, create, retrieve) are retried with this when transient.
CONTROL_RETRY = RetryConfig(
    max_attempts=8, backoff_strategy=BackoffStrategy.JITTER, initial_delay=1.0, max_delay=60.0
).policy()


@dataclass(frozen=True, slots=True)
class Remote:
    """What the provider says of a batch."""

    id: str
    status: str
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    error_code: str | None = None
    error: str | None = None  # the server's reason, the key taken out
    metadata: dict[str, str] = field(default_factory=dict)
    # Refused for the enqueued-token limit (create it again once others are done), as
    # the provider tells it: OpenAI's code token_limit_exceeded, or a message naming it.
    queue_full: bool = False

    @classmethod
    def of(cls, batch: Any, secret: bytes = b"") -> Remote:
        counts = batch.request_counts
        errors = getattr(batch.errors, "data", None) or []
        first = errors[0] if errors else None
        code, message = getattr(first, "code", None), getattr(first, "message", None)
        if message and secret:
            message = redact(message.encode(), secret).decode()
        reason = f"{code or ''} {message or ''}".lower()
        return cls(
            id=batch.id,
            status=batch.status,
            total=counts.total if counts else 0,
            completed=counts.completed if counts else 0,
            failed=counts.failed if counts else 0,
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
            error_code=code,
            error=message,
            metadata=dict(batch.metadata or {}),
            queue_full="token_limit" in reason or "enqueued" in reason,
        )


class BatchAPI(Protocol):
    """What the Batch API mode asks of a provider's batches: OpenAI's (`RemoteBatches`)
    or Anthropic's Message Batches (`llmbatch.providers.anthropic_batches`)."""

    async def upload(self, name: str, data: IO[bytes]) -> str: ...
    async def find_file(self, name: str) -> str | None: ...
    async def create(self, file_id: str, endpoint: str, metadata: dict[str, str]) -> Remote: ...
    async def find_batch(self, metadata: dict[str, str]) -> Remote | None: ...
    async def retrieve(self, batch_id: str) -> Remote: ...
    async def cancel(self, batch_id: str) -> Remote: ...
    async def download(self, file_id: str, dest: IO[bytes]) -> None: ...


class RemoteBatches:
    """The Batch API through the openai SDK (files and batches), retried when transient."""

    def __init__(self, client: openai.AsyncOpenAI, *, log: Callable[[str], None] = lambda _: None) -> None:
        self.client = client
        self.log = log
        self._secret = secret_of(client.api_key)  # out of every message the server sends

    async def _call(
        self, what: str, call: Callable[[], Awaitable[Any]], lost: Callable[[], Awaitable[Any]] | None = None
    ) -> Any:
        """`call()`, retried on transient errors; before each retry, `lost()` may find
        what a call whose answer was lost created (and that is the result)."""
        last_delay = 0.0
        for attempt in range(1, CONTROL_RETRY.retries + 2):
            try:
                return await call()
            except Exception as exc:
                err = translate(exc, self._secret) if isinstance(exc, openai.OpenAIError) else exc
                if not isinstance(err, TransientError) or not CONTROL_RETRY.allows(attempt - 1):
                    if isinstance(err, ProviderError):
                        raise err from None
                    raise
                wait = CONTROL_RETRY.wait(err, attempt, last_delay)
                last_delay = wait.seconds
                capped = f" (it asked for {wait.asked:.0f}s)" if wait.capped else ""
                self.log(f"{what}: {err}; trying again in {wait.seconds:.0f}s{capped}")
                await asyncio.sleep(wait.seconds)
                if lost is not None:
                    found = await lost()
                    if found is not None:
                        return found
        raise AssertionError("unreachable")

    async def upload(self, name: str, data: IO[bytes]) -> str:
        async def call() -> str:
            data.seek(0)
            obj = await self.client.files.create(file=(name, data, "application/jsonl"), purpose="batch")
            return str(obj.id)

        return str(await self._call(f"uploading {name}", call, lambda: self.find_file(name)))

    async def find_file(self, name: str) -> str | None:
        """The id of an uploaded batch file named `name`, if there is one."""

        async def call() -> str | None:
            async for f in self.client.files.list(purpose="batch"):
                if f.filename == name:
                    return str(f.id)
            return None

        found: str | None = await self._call("listing files", call)
        return found

    async def create(self, file_id: str, endpoint: str, metadata: dict[str, str]) -> Remote:
        async def call() -> Remote:
            batch = await self.client.batches.create(
                input_file_id=file_id,
                endpoint=endpoint,  # type: ignore[arg-type]
                completion_window=COMPLETION_WINDOW,
                metadata=metadata,
            )
            return Remote.of(batch, self._secret)

        remote: Remote = await self._call("creating a batch", call, lambda: self.find_batch(metadata))
        return remote

    async def find_batch(self, metadata: dict[str, str]) -> Remote | None:
        """The batch whose metadata holds all of `metadata`, if there is one."""

        async def call() -> Remote | None:
            async for batch in self.client.batches.list(limit=100):
                md = batch.metadata or {}
                if all(md.get(k) == v for k, v in metadata.items()):
                    return Remote.of(batch, self._secret)
            return None

        found: Remote | None = await self._call("listing batches", call)
        return found

    async def retrieve(self, batch_id: str) -> Remote:
        async def call() -> Remote:
            return Remote.of(await self.client.batches.retrieve(batch_id), self._secret)

        remote: Remote = await self._call(f"checking batch {batch_id}", call)
        return remote

    async def cancel(self, batch_id: str) -> Remote:
        async def call() -> Remote:
            return Remote.of(await self.client.batches.cancel(batch_id), self._secret)

        remote: Remote = await self._call(f"cancelling batch {batch_id}", call)
        return remote

    async def download(self, file_id: str, dest: IO[bytes]) -> None:
        """A result file's content into `dest`, streamed (it may be hundreds of MB)."""

        async def call() -> None:
            dest.seek(0)
            dest.truncate()
            async with self.client.files.with_streaming_response.content(file_id) as resp:
                async for chunk in resp.iter_bytes():
                    dest.write(chunk)
            dest.flush()

        await self._call(f"downloading {file_id}", call)
