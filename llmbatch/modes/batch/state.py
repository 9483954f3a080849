"""The Batch API mode's record of what it has asked the provider to do, kept durably
beside the output (``OUTPUT.batches.db``, SQLite): the chunks of items, and for each the
file it was uploaded as and the batch it runs in.

Every call that creates a remote object is bracketed: its *intent* is committed before
the call (`UPLOADING`, `CREATING`), its *result* after (the file id, the batch id). A run
killed between the two finds the intent on its next start and asks the provider what
became of it (by the file's name, or the batch's metadata) instead of creating another:
nothing is uploaded, or paid for, twice.

A chunk goes FILLING -> SEALED -> UPLOADING -> UPLOADED -> CREATING -> RUNNING ->
COLLECTED; a batch refused for the enqueued-token limit goes back to UPLOADED (its file
is kept), `held` until the running batches are done, to be created again then. Items
that need another round after collection move to a new chunk; an item is `done` once
its output line is on disk.
"""

from __future__ import annotations

import contextlib
import enum
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from llmbatch.core.errors import ConfigError
from llmbatch.core.values import Finished, Request, State
from llmbatch.files import sidecars

__all__ = ["Batch", "BatchState", "Chunk", "ChunkState", "Item"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    round INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    items INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0,
    worst REAL NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    live INTEGER NOT NULL DEFAULT 0,
    file_id TEXT,
    batch_id TEXT,
    status TEXT,
    counts TEXT,
    error TEXT,
    created REAL NOT NULL,
    submitted REAL,
    held INTEGER NOT NULL DEFAULT 0,
    completed REAL
);
CREATE TABLE IF NOT EXISTS items (
    custom_id TEXT PRIMARY KEY,
    chunk INTEGER NOT NULL,
    line INTEGER NOT NULL,
    request BLOB NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    rung INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS items_by_chunk ON items (chunk, done);
"""


class ChunkState(enum.StrEnum):
    FILLING = "filling"  # items are being added
    SEALED = "sealed"  # complete, not yet uploaded
    UPLOADING = "uploading"  # intent: the upload may or may not have happened
    UPLOADED = "uploaded"  # file_id known
    CREATING = "creating"  # intent: the batch may or may not exist
    RUNNING = "running"  # batch_id known, not yet collected
    COLLECTED = "collected"  # every item written or moved on


OPEN = (ChunkState.UPLOADING, ChunkState.UPLOADED, ChunkState.CREATING, ChunkState.RUNNING)


@dataclass(frozen=True, slots=True)
class Chunk:
    id: int
    round: int
    endpoint: str
    model: str
    items: int
    bytes: int
    tokens: int
    worst: float  # USD at most, under --max-cost
    state: ChunkState
    live: bool  # its items go to the live API (--then live), not into a batch
    file_id: str | None
    batch_id: str | None
    status: str | None  # the batch's status at the provider
    counts: dict[str, int]
    error: str | None
    created: float
    submitted: float | None
    held: bool  # refused for the enqueued-token limit: created again once the others end
    completed: float | None  # when it was collected (a report's timeline of batches)


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch on a report's timeline."""

    batch_id: str
    model: str
    items: int
    created: float | None
    completed: float | None
    status: str | None


@dataclass(frozen=True, slots=True)
class Item:
    request: Request
    chunk: int
    requests: int  # answers so far, re-asks included
    retries: int  # transient failures so far
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    rung: int = 0  # --escalate: the model it is on (0: the first)
    cache_write_tokens: int = 0

    def tally(self) -> Finished:
        """The item's outcome so far, to build on with its next answer."""
        return Finished(
            request=self.request,
            state=State.FAILED,
            requests=self.requests,
            retries=self.retries,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
            reasoning_tokens=self.reasoning_tokens,
            rung=self.rung,
            cache_write_tokens=self.cache_write_tokens,
        )


def _request_blob(req: Request) -> bytes:
    return orjson.dumps(
        {"body": req.body, "url": req.url, "metadata": req.metadata, "item": req.item, "fp": req.fp}
    )


def _request(custom_id: str, line: int, blob: bytes) -> Request:
    data: dict[str, Any] = orjson.loads(blob)
    return Request(custom_id, data["body"], data["url"], line, data["metadata"], data["item"], data["fp"])


class BatchState:
    """The record, open for one run (the output's lock keeps it to one at a time)."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        try:
            if read_only:  # a report's look: never create or migrate (mode=ro would leave -wal, -shm)
                self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)
                self.run_id, self._pending = "", 0
                return
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.executescript(_SCHEMA)
            _migrate(self._db)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot use the batch record {path}: {exc}") from None
        row = self._db.execute("SELECT value FROM meta WHERE key = 'run'").fetchone()
        if row is None:
            self.run_id = secrets.token_hex(6)
            self._db.execute("INSERT INTO meta VALUES ('run', ?)", (self.run_id,))
        else:
            self.run_id = row[0]
        self._pending = 0

    @classmethod
    def existing(cls, output: Path) -> BatchState | None:
        path = sidecars.batches(output)
        return cls(path) if path.exists() else None

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.commit()
            self._db.close()

    # --- transactions ------------------------------------------------------------

    def begin(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN")

    def commit(self) -> None:
        if self._db.in_transaction:
            self._db.execute("COMMIT")
        self._pending = 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.commit()

    # --- chunks ------------------------------------------------------------------

    def chunks(self, *states: ChunkState) -> list[Chunk]:
        query = "SELECT * FROM chunks"
        if states:
            query += f" WHERE state IN ({', '.join('?' * len(states))})"
        rows = self._db.execute(query + " ORDER BY id", [s.value for s in states]).fetchall()
        return [_chunk(r) for r in rows]

    def chunk(self, chunk_id: int) -> Chunk:
        return _chunk(self._db.execute("SELECT * FROM chunks WHERE id = ?", (chunk_id,)).fetchone())

    def open_batches(self) -> list[Chunk]:
        """Chunks the provider may be holding: uploaded, being created, or running."""
        return [c for c in self.chunks(*OPEN) if not c.live]

    def new_chunk(self, *, round_: int, endpoint: str, model: str, live: bool = False) -> int:
        """A FILLING chunk, made in the transaction its first items go in."""
        self.begin()
        cur = self._db.execute(
            "INSERT INTO chunks (round, endpoint, model, state, live, created) VALUES (?, ?, ?, ?, ?, ?)",
            (round_, endpoint, model, ChunkState.FILLING.value, int(live), time.time()),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def update(self, chunk_id: int, **fields: object) -> None:
        """Set fields of a chunk and commit at once: an intent must be on disk before
        the call it announces."""
        values = [
            v.value if isinstance(v, enum.Enum) else orjson.dumps(v).decode() if isinstance(v, dict) else v
            for v in fields.values()
        ]
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction():
            self._db.execute(f"UPDATE chunks SET {assignments} WHERE id = ?", (*values, chunk_id))

    def timeline(self) -> list[Batch]:
        """The batches this record ran, each from when it was created to when it was
        collected (None: not yet), in the order they were created."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(chunks)")}
        completed = "completed" if "completed" in columns else "NULL"  # an older record, read only
        rows = self._db.execute(
            f"SELECT batch_id, model, items, submitted, {completed}, status FROM chunks "
            "WHERE batch_id IS NOT NULL AND live = 0 ORDER BY submitted, id"
        )
        return [Batch(*row) for row in rows]

    # --- items -------------------------------------------------------------------

    def add(
        self,
        chunk_id: int,
        req: Request,
        *,
        size: int,
        tokens: int,
        worst: float = 0.0,
        moving: bool = False,
    ) -> None:
        """Put an item in a chunk: a new item (or one written by an earlier run and
        asked again now), or with `moving` one of this record going on to another
        round with what it has used so far. Committed with the chunk's next seal, or
        every few thousand items."""
        self.begin()
        if not moving:
            self._db.execute(
                "INSERT INTO items (custom_id, chunk, line, request) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (custom_id) DO UPDATE SET chunk = excluded.chunk, line = excluded.line, "
                "request = excluded.request, requests = 0, retries = 0, prompt_tokens = 0, "
                "completion_tokens = 0, cached_tokens = 0, reasoning_tokens = 0, rung = 0, "
                "cache_write_tokens = 0, done = 0",
                (req.custom_id, chunk_id, req.line, _request_blob(req)),
            )
        else:  # its request too: a re-ask may carry the conversation (Responses, completions)
            self._db.execute(
                "UPDATE items SET chunk = ?, request = ? WHERE custom_id = ?",
                (chunk_id, _request_blob(req), req.custom_id),
            )
        self._db.execute(
            "UPDATE chunks SET items = items + 1, bytes = bytes + ?, tokens = tokens + ?, worst = worst + ? "
            "WHERE id = ?",
            (size, tokens, worst, chunk_id),
        )
        self._pending += 1
        if self._pending >= 2000:
            self.commit()

    def seal(self, chunk_id: int) -> None:
        self.begin()
        self._db.execute("UPDATE chunks SET state = ? WHERE id = ?", (ChunkState.SEALED.value, chunk_id))
        self.commit()

    def ids(self, chunk_id: int) -> list[str]:
        """The ids of the chunk's items not yet written (a list: the caller moves them)."""
        rows = self._db.execute(
            "SELECT custom_id FROM items WHERE chunk = ? AND done = 0 ORDER BY rowid", (chunk_id,)
        )
        return [cid for (cid,) in rows]

    def known_ids(self) -> Iterator[str]:
        """The ids of items this record holds and has not written yet."""
        for (cid,) in self._db.execute("SELECT custom_id FROM items WHERE done = 0"):
            yield cid

    def items(self, chunk_id: int) -> Iterator[Item]:
        """The chunk's items not yet written, in the order they were added."""
        rows = self._db.execute(
            f"SELECT {_ITEM} FROM items WHERE chunk = ? AND done = 0 ORDER BY rowid", (chunk_id,)
        )
        for row in rows:
            yield _item(row)

    def item(self, custom_id: str) -> Item | None:
        row = self._db.execute(
            f"SELECT {_ITEM} FROM items WHERE custom_id = ? AND done = 0", (custom_id,)
        ).fetchone()
        return None if row is None else _item(row)

    def record_use(self, tally: Finished) -> None:
        """What an item has used, before it moves on to another round."""
        self.begin()
        self._db.execute(
            "UPDATE items SET requests = ?, retries = ?, prompt_tokens = ?, completion_tokens = ?, "
            "cached_tokens = ?, reasoning_tokens = ?, rung = ?, cache_write_tokens = ? WHERE custom_id = ?",
            (
                tally.requests,
                tally.retries,
                tally.prompt_tokens,
                tally.completion_tokens,
                tally.cached_tokens,
                tally.reasoning_tokens,
                tally.rung,
                tally.cache_write_tokens,
                tally.request.custom_id,
            ),
        )

    def mark_done(self, custom_ids: Iterable[str]) -> None:
        self.begin()
        self._db.executemany("UPDATE items SET done = 1 WHERE custom_id = ?", ((c,) for c in custom_ids))
        self.commit()

    def release(self, chunk_id: int) -> int:
        """Forget a chunk's unwritten items (a cancelled batch): a later run asks for
        them afresh. Returns how many."""
        with self.transaction():
            cur = self._db.execute("DELETE FROM items WHERE chunk = ? AND done = 0", (chunk_id,))
        return cur.rowcount

    def upload_lines(self, chunk_id: int) -> Iterator[bytes]:
        """The chunk's Batch API input file, line by line."""
        for item in self.items(chunk_id):
            req = item.request
            line = {"custom_id": req.custom_id, "method": "POST", "url": req.url, "body": req.body}
            yield orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


_ITEM = (
    "custom_id, line, request, chunk, requests, retries, prompt_tokens, completion_tokens, cached_tokens, "
    "reasoning_tokens, rung, cache_write_tokens"
)


def _item(row: tuple[Any, ...]) -> Item:
    cid, line, blob, chunk, requests, retries, prompt, completion, cached, reasoning, rung, written = row
    return Item(
        _request(cid, line, blob),
        chunk,
        requests,
        retries,
        prompt,
        completion,
        cached,
        reasoning,
        rung,
        written,
    )


def _migrate(db: sqlite3.Connection) -> None:
    """A record written by an older llmbatch: the columns added since, and a chunk it
    marked as waiting for the enqueued-token limit by its error text."""
    columns = {
        table: {row[1] for row in db.execute(f"PRAGMA table_info({table})")} for table in ("items", "chunks")
    }
    if "cached_tokens" not in columns["items"]:
        db.execute("ALTER TABLE items ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0")
    if "reasoning_tokens" not in columns["items"]:
        db.execute("ALTER TABLE items ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0")
    if "rung" not in columns["items"]:  # --escalate
        db.execute("ALTER TABLE items ADD COLUMN rung INTEGER NOT NULL DEFAULT 0")
    if "cache_write_tokens" not in columns["items"]:
        db.execute("ALTER TABLE items ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0")
    if "held" not in columns["chunks"]:
        db.execute("ALTER TABLE chunks ADD COLUMN held INTEGER NOT NULL DEFAULT 0")
        db.execute("UPDATE chunks SET held = 1 WHERE error LIKE 'enqueued token limit:%'")
    if "completed" not in columns["chunks"]:
        db.execute("ALTER TABLE chunks ADD COLUMN completed REAL")


def _chunk(row: tuple[Any, ...]) -> Chunk:
    """A chunk from its row (the columns in the order of its fields)."""
    id_, round_, endpoint, model, items, size, tokens, worst = row[:8]
    state, live, file_id, batch_id, status, counts, error, created, submitted, held, completed = row[8:]
    return Chunk(
        id_,
        round_,
        endpoint,
        model,
        items,
        size,
        tokens,
        worst,
        ChunkState(state),
        bool(live),
        file_id,
        batch_id,
        status,
        orjson.loads(counts) if counts else {},
        error,
        created,
        submitted,
        bool(held),
        completed,
    )
