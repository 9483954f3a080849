"""One quota, many processes: the budget of an API key shared through Redis (``--redis``).

A provider's limits belong to a key (per model), not to a process: several llmbatch runs
on one key, each pacing itself as if alone, overshoot the limit together. With
``--redis URL`` every process that names the same budget (``--redis-key``; by default
one made from the base URL, the model and a fingerprint of the API key, never the key)
shares, under ``llmbatch:{NAME}:``:

- ``requests``, ``tokens``: the RPM and TPM budgets, given by flags or learned from the
  server's headers, as atomic token buckets on Redis' clock
  (:class:`~llmbatch.scale.redisbucket.RedisBucket`); token refunds and debts settle there;
- ``pause``: a 429's pause, a key that expires when the pause ends (in Redis time), so a
  pause one process is asked for holds for all; nothing is spent while it lasts;
- ``cut``: the last time a process lowered its pace (after a real share of 429s), for a
  while; each of the others then cuts its own pace the same way, once, from its own
  rates (a process's pace is its share of the key's), and climbs back on its own, as a
  single run does;
- ``peers``: a sorted set of the processes at work, by their last heartbeat (Redis
  time); those silent for `PEER_TTL` have gone. The count is the share of the key's
  request limit a process paces toward after a cut, and the share each process falls
  back to when Redis is away.

Redis unreachable at the start is a `ConfigError` (exit 2): nothing was sent. Lost
mid-run, the run goes on: a warning, once; each bucket paces at the budget divided by
the processes last seen (`RedisBucket.go_local`); Redis is tried every
`RECONNECT_EVERY` seconds and used again when it answers. The engine never sees a Redis
error: limits only ever delay a request, so nothing is lost or sent twice.

Scripts run by EVALSHA; when Redis has lost its script cache (a restart) the client
loads them again and retries (redis-py's `register_script`). The keys share one hash
tag, so the scripts also run on a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from llmbatch.core.errors import ConfigError
from llmbatch.scale.redisbucket import BUCKET_LUA, RedisBucket

__all__ = ["SharedBudget", "default_key", "safe_url"]

# How often a process says it is alive and reads the pause, the cut and the peers.
SYNC_EVERY = 0.5
# A process not heard from in this long has gone (killed, or cut off from Redis).
PEER_TTL = 5.0
# While Redis is away, how often to try it again.
RECONNECT_EVERY = 1.0
# Redis answers in well under a millisecond: a command this late means it is away.
SOCKET_TIMEOUT = 2.0
# A budget untouched this long is forgotten (it would have refilled long before).
BUCKET_TTL_MS = 15 * 60 * 1000
# A pace cut is adopted by the processes that look within this long of it (those at work:
# a process that starts later starts as a single run does).
CUT_TTL_MS = 3_000
# What a bucket notes (refunds, debts, the server's word) reaches Redis this soon when no
# acquire carries it first: the other processes pace by it.
FLUSH_AFTER = 0.02
# Closing (the last refunds, leaving the peers) waits no longer than this for Redis.
CLOSE_WAIT = 3.0

# KEYS: [1] the peers, [2] the pause ("process<TAB>cause", expiring with the pause),
# [3] the last cut (a hash: at, by). ARGV: [1] op, [2] this process.
STATE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, me = ARGV[1], ARGV[2]
if op == 'pause' then
  local ms = tonumber(ARGV[3])
  if redis.call('PTTL', KEYS[2]) < ms then
    redis.call('SET', KEYS[2], me .. '\\t' .. ARGV[4], 'PX', ms)
  end
  return 1
elseif op == 'cut' then
  redis.call('HSET', KEYS[3], 'at', tostring(now) .. ':' .. me, 'by', me)
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
  return 1
elseif op == 'leave' then
  redis.call('ZREM', KEYS[1], me)
  return 1
end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, me)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
local cut = redis.call('HMGET', KEYS[3], 'at', 'by')
return {redis.call('ZCARD', KEYS[1]), redis.call('PTTL', KEYS[2]), redis.call('GET', KEYS[2]) or '',
  cut[1] or '', cut[2] or ''}
"""


def default_key(base_url: str, model: str | None, api_key: str | None) -> str:
    """The budget's name when --redis-key is not given: the model (readable, for a
    look in Redis), and a hash of the base URL, the model and a fingerprint of the API
    key: runs on the same key, server and model share a budget, and nothing in Redis
    tells the key (or a token in the URL)."""
    key_fp = hashlib.blake2b((api_key or "").encode(), digest_size=16, person=b"llmbatch-key").digest()
    material = b"\0".join((base_url.rstrip("/").encode(), (model or "").encode(), key_fp))
    name = re.sub(r"[^A-Za-z0-9._/-]", "_", model or "any")
    return f"{name}:{hashlib.blake2b(material, digest_size=8).hexdigest()}"


def safe_url(url: str) -> str:
    """The Redis URL for messages: scheme, host, port and database, never a password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the --redis URL"
    return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else "the --redis URL"


def _reason(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def _num(x: float) -> str:
    return repr(float(x))


def _silent(message: str) -> None:
    pass


class SharedBudget:
    """The shared state of one budget in Redis, for one process: the buckets, the pause,
    the pace cuts and the peers (the :class:`~llmbatch.schedule.shared.Shared` seam of the limits).
    Made by `connect`; `aclose` at the end."""

    def __init__(self, client: Redis, name: str, *, where: str, log: Callable[[str], None] = _silent) -> None:
        self._client = client
        self.name = name
        self.where = where  # the URL without credentials, for messages
        self.log = log
        self.loop = asyncio.get_running_loop()
        self.me = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        prefix = f"llmbatch:{{{name.replace('{', '_').replace('}', '_')}}}:"
        # "output": Anthropic's output tokens, limited apart from the (input) tokens.
        self.keys = {k: prefix + k for k in ("requests", "tokens", "output", "pause", "cut", "peers")}
        self._bucket_lua = client.register_script(BUCKET_LUA)
        self._state_lua = client.register_script(STATE_LUA)
        self.online = True
        self.peers = 1  # processes on the budget, this one included, at the last look
        self._buckets: dict[str, RedisBucket] = {}
        self._pause_until = 0.0  # the key's pause, on this loop's clock
        self._pause_cause = ""
        self._cut_seen = ""  # the last cut read, so each is adopted once
        self._cut = False  # another process has cut since take_cut last said so
        self._outbox_pause: tuple[float, str] | None = None
        self._outbox_cut = False
        self._wake = asyncio.Event()
        self._flush: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    async def connect(cls, url: str, name: str, *, log: Callable[[str], None] = _silent) -> SharedBudget:
        """Reach Redis at `url` and join the budget `name`; a ConfigError saying why
        when Redis cannot be reached."""
        where = safe_url(url)
        try:
            # One quick retry (a pooled connection Redis closed), then our own fallback.
            client = Redis.from_url(
                url,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 1),
            )
        except ValueError as exc:
            raise ConfigError(f"--redis: {exc}") from None
        budget = cls(client, name, where=where, log=log)
        try:
            await budget._beat(first=True)
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise ConfigError(
                f"cannot reach Redis at {where} (--redis): {_reason(exc)}; nothing was sent"
            ) from None
        budget._task = budget.loop.create_task(budget._keep_in_touch())
        return budget

    # --- the Shared seam (llmbatch.schedule.shared) -------------------------------------------

    def bucket(self, kind: str, per_minute: float, *, spent: float = 0.0) -> RedisBucket:
        """The budget of `kind` ("requests", "tokens" or "output"), `per_minute` being this
        process's limit for it (given, or just learned: it becomes the budget's)."""
        bucket = RedisBucket(self, self.keys[kind], per_minute, spent=spent)
        old = self._buckets.get(kind)
        if old is not None:
            bucket.delta += old.delta  # the old bucket's unsent refunds are the same budget's
        self._buckets[kind] = bucket
        return bucket

    def publish_pause(self, seconds: float, cause: str) -> None:
        """A 429 paused this process: pause every process on the key."""
        if not self.online:
            return
        if self._outbox_pause is None or seconds > self._outbox_pause[0]:
            self._outbox_pause = (seconds, cause)
        self._wake.set()

    def publish_cut(self) -> None:
        """This process lowered its pace after 429s: so should the others."""
        if not self.online:
            return
        self._outbox_cut = True
        self._wake.set()

    def pause_left(self) -> tuple[float, str]:
        """Seconds left of the key's pause, and its cause (0 when there is none)."""
        return max(0.0, self._pause_until - self.loop.time()), self._pause_cause

    def take_cut(self) -> bool:
        """Whether another process has cut its pace since the last call."""
        cut, self._cut = self._cut, False
        return cut

    # --- for RedisBucket --------------------------------------------------------------

    def noted(self) -> None:
        """A bucket noted something for Redis: send it soon, if no acquire does first."""
        if self._flush is None and self.online:
            self._flush = self.loop.call_later(FLUSH_AFTER, self._flush_now)

    def _flush_now(self) -> None:
        self._flush = None
        self._wake.set()

    async def run_bucket(self, bucket: RedisBucket, take: float | None) -> tuple[float, float] | None:
        """Run the bucket script for `bucket`: spend `take` units (None: only send what
        is noted). Returns (seconds to wait, seconds of pause left), or None when Redis
        was lost (the bucket is local from now)."""
        delta, available, new_rate = bucket.delta, bucket.available, bucket.new_rate
        left = (
            None if available is None else available + (self.loop.time() - bucket.available_at) * bucket.rate
        )
        args = (
            "" if take is None else _num(take),
            _num(delta),
            "" if left is None else _num(left),
            "" if new_rate is None else _num(new_rate),
            _num(bucket.per_minute),
            _num(bucket.born),
            "1" if bucket.claim else "0",
            BUCKET_TTL_MS,
            self.me,
        )
        try:
            reply = await self._bucket_lua(keys=[bucket.key, self.keys["pause"]], args=args)
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return None
        bucket.sent(delta, available, new_rate, reply)
        paused = int(reply[1]) / 1000.0
        if paused > 0:
            self._saw_pause(paused, reply[2])
        return int(reply[0]) / 1e6, paused

    # --- keeping in touch -------------------------------------------------------------

    async def _beat(self, *, first: bool = False) -> None:
        """Say this process is alive; read the peers, the pause and the last cut (the
        `first` look only notes the last cut: it was made before this process sent)."""
        keys = [self.keys["peers"], self.keys["pause"], self.keys["cut"]]
        reply = await self._state_lua(keys=keys, args=("beat", self.me, int(PEER_TTL * 1000)))
        peers, pause_ms, pause, at, by = reply
        self.peers = max(1, int(peers))
        if int(pause_ms) > 0:
            self._saw_pause(int(pause_ms) / 1000.0, pause)
        at = _text(at)
        if at and at != self._cut_seen:
            self._cut_seen = at
            self._cut = self._cut or (_text(by) != self.me and not first)

    def _saw_pause(self, seconds: float, value: Any) -> None:
        by, _, cause = _text(value).partition("\t")
        until = self.loop.time() + seconds
        if until > self._pause_until + 0.01:
            self._pause_until = until
            self._pause_cause = cause if by == self.me else f"{cause}, seen by another process"

    async def _keep_in_touch(self) -> None:
        """The heartbeat, the outbox (pauses and cuts at once; bucket notes not carried
        by an acquire), and reconnecting while Redis is away."""
        last_beat = self.loop.time()
        while not self._closing:
            # asyncio.timeout, not wait_for: 3.11's wait_for can lose a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SYNC_EVERY if self.online else RECONNECT_EVERY):
                    await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            if not self.online:
                with contextlib.suppress(RedisError, OSError):
                    await self._beat()
                    self._back()
                    last_beat = self.loop.time()
                continue
            try:
                await self._send_outbox()
            except (RedisError, OSError) as exc:
                self._lost(exc)
                continue
            for bucket in list(self._buckets.values()):
                if bucket.pending and self.online:
                    await self.run_bucket(bucket, None)
            if self.online and self.loop.time() - last_beat >= SYNC_EVERY:
                try:
                    await self._beat()
                except (RedisError, OSError) as exc:
                    self._lost(exc)
                last_beat = self.loop.time()

    async def _send_outbox(self) -> None:
        keys = [self.keys["peers"], self.keys["pause"], self.keys["cut"]]
        pause, self._outbox_pause = self._outbox_pause, None
        if pause is not None:
            ms = max(1, int(pause[0] * 1000))
            await self._state_lua(keys=keys, args=("pause", self.me, ms, pause[1]))
        cut, self._outbox_cut = self._outbox_cut, False
        if cut:
            await self._state_lua(keys=keys, args=("cut", self.me, CUT_TTL_MS))

    def _lost(self, exc: BaseException) -> None:
        if not self.online:
            return
        self.online = False
        self._outbox_pause, self._outbox_cut = None, False
        for bucket in self._buckets.values():
            bucket.go_local(self.peers)
        if not self._closing:
            share = (
                f"1/{self.peers} of the budget ({self.peers} processes seen)"
                if self.peers > 1
                else "the budget"
            )
            self.log(
                f"Redis at {self.where} lost ({_reason(exc)}): going on with local limits at {share}; "
                "reconnecting"
            )
        self._wake.set()

    def _back(self) -> None:
        self.online = True
        for bucket in self._buckets.values():
            bucket.go_shared()
        self.log(f"Redis at {self.where} is back: the budget is shared again ({self.peers} processes)")

    async def aclose(self) -> None:
        """Send what is noted (refunds), leave the peers, close the connection."""
        self._closing = True
        self._wake.set()
        if self._flush is not None:
            self._flush.cancel()
        if self._task is not None:
            # It ends at its next look (at most one Redis call away); a cancel if not.
            done, _ = await asyncio.wait({self._task}, timeout=CLOSE_WAIT)
            if not done:
                self._task.cancel()
        if self.online:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT):
                    for bucket in list(self._buckets.values()):
                        if bucket.pending and self.online:
                            await self.run_bucket(bucket, None)
                    if self.online:
                        keys = [self.keys["peers"], self.keys["pause"], self.keys["cut"]]
                        await self._state_lua(keys=keys, args=("leave", self.me))
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")
