"""The response cache (``--cache PATH``): valid answers kept in SQLite on the local
disk, keyed by the request fingerprint and the server, so that the same request asked
again (in this run, another output, another process) costs nothing.

Only valid answers go in (the engine puts an answer after it validated it), a re-ask's
answer replaces the entry, and the API key is never stored (only response bodies,
which the provider has already cleaned of it). WAL mode lets several processes share
one file; it is not for network file systems, where SQLite's locking is unreliable.
Writes are collected and committed together a few times a second: one transaction
per answer would cost more than the request it saves.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import orjson

from llmbatch.core.endpoints import CHAT_ENDPOINT, Endpoint
from llmbatch.core.errors import ConfigError
from llmbatch.core.values import Completion, Usage

__all__ = ["ResponseCache"]

COMMIT_INTERVAL = 0.2  # seconds between commits of collected answers
BUSY_TIMEOUT_MS = 30_000  # another process holding the write lock: wait this long

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    fp INTEGER NOT NULL,
    server TEXT NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    stored REAL NOT NULL,
    PRIMARY KEY (fp, server)
) WITHOUT ROWID
"""


_GET = "SELECT status, body, prompt_tokens, completion_tokens FROM answers WHERE fp = ? AND server = ?"


class ResponseCache:
    """Answers by (fingerprint, server). `server` is the hash the output lines carry."""

    def __init__(self, path: Path, *, server: str) -> None:
        self.path = path
        self.server = server
        try:
            self._db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot use cache {path}: {exc}") from None
        self._pending: dict[int, tuple[int, bytes, int, int]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.hits = 0
        self.stored = 0

    def get(self, fp: int, endpoint: Endpoint = CHAT_ENDPOINT) -> Completion | None:
        """The valid answer kept for the request `fp` (of `endpoint`, which reads it)."""
        pending = self._pending.get(fp)
        if pending is not None:
            status, raw, prompt, completion = pending
        else:
            row = self._db.execute(_GET, (fp, self.server)).fetchone()
            if row is None:
                return None
            status, raw, prompt, completion = row
        self.hits += 1
        return Completion(
            body=orjson.loads(raw), status_code=status, usage=Usage(prompt, completion), endpoint=endpoint
        )

    def put(self, fp: int, completion: Completion) -> None:
        """Keep a valid answer (replacing what was there); committed shortly."""
        usage = completion.usage
        raw = orjson.dumps(completion.body)
        self._pending[fp] = (completion.status_code, raw, usage.prompt_tokens, usage.completion_tokens)
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.commit()
                return
            self._timer = loop.call_later(COMMIT_INTERVAL, self.commit)

    def commit(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        rows = [(fp, self.server, *values, time.time()) for fp, values in self._pending.items()]
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error:
            return  # a cache that cannot be written is a cache miss next time, not a failed run
        self.stored += len(rows)
        self._pending.clear()

    def close(self) -> None:
        self.commit()
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
