"""A `Bucket` whose budget lives in Redis, shared by every process that names its key.

The bucket is a hash in Redis (``level``, ``t``, ``rate``, ``cap``, ``limit``) changed
only by one Lua script, `BUCKET_LUA`, so every change is atomic, and every change takes
the time from Redis (``TIME``): processes on hosts whose clocks disagree still agree on
how much has refilled. It is the same leaky bucket as `LocalBucket` (one second's worth
of capacity, a debt of at most one minute's budget): a spend that fits is made at once;
one that does not is refused with the time until it would fit, and tried again then (at
most `MAX_WAIT` later, so that a refund or a peer's word is not slept through). Units
are never booked ahead: a refund, a debt or the server's word on what is left then mean
exactly what they mean to a `LocalBucket` (a booking made before them could not be taken
back).

Only `acquire` can wait for Redis. Refunds and debts (`adjust`), the server's word on
what is left (`cap_available`) and a new pace (`set_rate`) are noted here and reach Redis
with the next `acquire` of this bucket, or a moment later from the shared budget
(:mod:`llmbatch.scale.budget`), whichever is first; what the server said was left is sent
with what has refilled since it said so. The properties read a local mirror of the last
answer (the display reads them from its own thread).

While Redis is away the bucket is a `LocalBucket` at this process's share of the budget
(the rate divided by the processes last seen), made spent so the share starts with no
burst; when Redis is back, the next `acquire` goes to Redis again.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from llmbatch.schedule.buckets import LocalBucket

if TYPE_CHECKING:
    from llmbatch.scale.budget import SharedBudget

__all__ = ["BUCKET_LUA", "RedisBucket"]

# KEYS[1]: the bucket; KEYS[2]: the key's pause (while it exists, nothing is spent).
# ARGV: [1] units to spend ('' for none), [2] a debt (+) or refund (-), [3] what the
# server says is left ('' for no word), [4] a new pace in units a minute ('' for none),
# [5] the caller's limit a minute, [6] the level a bucket made by this call starts at,
# [7] '1' when the caller's limit (just given or learned) becomes the budget's,
# [8] the expiry in ms (an idle budget is forgotten: by then it would be full anyway),
# [9] the caller (a process id).
# A spend that does not fit leaves a claim (who, need, till) when there is none: until
# its caller tries again, others spend only what leaves room for it, so a large request
# (a cold token estimate) is not starved by a peer's stream of small ones.
# Returns {wait in us (0: spent), pause left in ms, the pause's cause, level, rate, cap}:
# Lua numbers reach the client as integers, so fractions travel as strings.
BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local h = redis.call('HMGET', KEYS[1], 'level', 't', 'rate', 'cap', 'limit', 'who', 'need', 'till')
local level, last, rate = tonumber(h[1]), tonumber(h[2]), tonumber(h[3])
local cap, limit = tonumber(h[4]), tonumber(h[5])
local mine = tonumber(ARGV[5])
if not (level and last and rate and cap and limit) then
  limit, rate, cap = mine, mine / 60, math.max(1, mine / 60)
  level, last = math.min(tonumber(ARGV[6]), cap), now
end
level = math.max(0, level - math.max(0, now - last) * rate)
if ARGV[7] == '1' and limit ~= mine then
  limit, rate, cap = mine, mine / 60, math.max(1, mine / 60)
  level = math.min(level, cap + limit)
end
if ARGV[4] ~= '' then
  rate = tonumber(ARGV[4]) / 60
  cap = math.max(1, rate)
  level = math.min(level, cap + limit)
end
local delta = tonumber(ARGV[2])
if delta ~= 0 then
  level = math.min(math.max(0, level + delta), math.max(cap + limit, level))
end
if ARGV[3] ~= '' then
  level = math.max(level, cap - math.max(0, tonumber(ARGV[3])))
end
local function num(x) return string.format('%.6f', x) end
local wait, paused, cause = 0, 0, ''
if ARGV[1] ~= '' then
  paused = redis.call('PTTL', KEYS[2])
  if paused > 0 then
    cause = redis.call('GET', KEYS[2]) or ''
  else
    paused = 0
    local amount = math.min(tonumber(ARGV[1]), cap)
    local who, need, till = h[6], tonumber(h[7]) or 0, tonumber(h[8]) or 0
    local claimed = till > now and who ~= ARGV[9]
    local room = cap - (claimed and need or 0)
    if level + amount <= room then
      level = level + amount
      if who == ARGV[9] then redis.call('HDEL', KEYS[1], 'who', 'need', 'till') end
    else
      wait = math.max(level + amount - room, 0.000001) / rate
      if not claimed then
        redis.call('HSET', KEYS[1], 'who', ARGV[9], 'need', num(amount), 'till', num(now + wait + 0.25))
      end
    end
  end
end
redis.call('HSET', KEYS[1], 'level', num(level), 't', num(now), 'rate', num(rate), 'cap', num(cap),
  'limit', num(limit))
redis.call('PEXPIRE', KEYS[1], ARGV[8])
return {math.floor(wait * 1000000), paused, cause, num(level), num(rate), num(cap)}
"""

# A spend that does not fit is tried again after at most this long.
MAX_WAIT = 0.5
# The level a bucket re-made by a call starts at once this process has used it: Redis
# lost the budget (a restart without persistence), and the server has just counted what
# was sent meanwhile, so the new bucket is spent (the script caps this at its capacity).
SPENT = 1e18


class RedisBucket:
    """A `Bucket` for `per_minute` units a minute, in Redis under `key` (see the module
    docstring). Made by `SharedBudget.bucket`."""

    __slots__ = (
        "_at",
        "_budget",
        "_cap",
        "_level",
        "_local",
        "_rate",
        "available",
        "available_at",
        "born",
        "claim",
        "delta",
        "key",
        "new_rate",
        "per_minute",
    )

    def __init__(self, budget: SharedBudget, key: str, per_minute: float, *, spent: float = 0.0) -> None:
        self._budget = budget
        self.key = key
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._cap = max(1.0, self._rate)
        self._level = min(spent, self._cap)
        self._at = budget.loop.time()
        self.born = spent  # the level the budget starts at if this bucket makes it
        self.claim = True  # the next call makes per_minute the budget's limit
        # Noted for Redis, not sent yet: a net debt or refund, the server's last word on
        # what is left, a new pace.
        self.delta = 0.0
        self.available: float | None = None
        self.available_at = 0.0  # when the server said so (it has refilled since)
        self.new_rate: float | None = None
        self._local: LocalBucket | None = None
        if not budget.online:
            self.go_local(budget.peers)

    @property
    def rate(self) -> float:
        return self._local.rate if self._local is not None else self._rate

    @property
    def capacity(self) -> float:
        return self._local.capacity if self._local is not None else self._cap

    @property
    def level(self) -> float:
        if self._local is not None:
            return self._local.level
        return max(0.0, self._level - (self._budget.loop.time() - self._at) * self._rate)

    @property
    def pending(self) -> bool:
        """Whether something noted here has not reached Redis yet."""
        return bool(self.delta) or self.available is not None or self.new_rate is not None

    async def acquire(self, amount: float) -> None:
        while True:
            local = self._local
            if local is not None:
                await local.acquire(amount)
                return
            reply = await self._budget.run_bucket(self, amount)
            if reply is None:
                continue  # Redis is away from now: the local share
            wait, paused = reply
            if paused > 0:  # another process's 429 pauses the key: nothing was spent
                await asyncio.sleep(paused)
            elif wait > 0:
                await asyncio.sleep(min(wait, MAX_WAIT))
            else:
                return

    def adjust(self, delta: float) -> None:
        if not delta:
            return
        if self._local is not None:
            self._local.adjust(delta)
        else:
            self.delta += delta
            self._budget.noted()

    def cap_available(self, available: float) -> None:
        if self._local is not None:
            self._local.cap_available(available / self._budget.peers)
        else:
            self.available = available  # the newest word wins
            self.available_at = self._budget.loop.time()
            self._budget.noted()

    def set_rate(self, per_minute: float) -> None:
        if self._local is not None:
            self._local.set_rate(per_minute / self._budget.peers)
            return
        self.new_rate = per_minute
        self._rate = per_minute / 60.0
        self._cap = max(1.0, self._rate)
        self._budget.noted()

    def offer(self, available: float) -> None:
        """Not taken: the key's budget is shared, and what one answer says is left is no
        process's own to spend at once (the shared bucket paces smoothly, as before)."""

    def wait_for(self, amount: float) -> float:
        if self._local is not None:
            return self._local.wait_for(amount)
        cap = self._cap
        return max(0.0, (self.level + min(amount, cap) - cap) / self._rate)

    # --- for SharedBudget -----------------------------------------------------------

    def sent(
        self, delta: float, available: float | None, new_rate: float | None, reply: list[object]
    ) -> None:
        """Redis has applied what the call carried and answered `reply` (BUCKET_LUA's)."""
        if self._local is not None:
            return  # Redis was lost meanwhile: what was noted is booked locally already
        self.delta -= delta
        if self.available == available:
            self.available = None
        if self.new_rate == new_rate:
            self.new_rate = None
        self.claim = False
        self.born = SPENT
        self._level = float(reply[3])  # type: ignore[arg-type]
        self._rate = float(reply[4])  # type: ignore[arg-type]
        self._cap = float(reply[5])  # type: ignore[arg-type]
        self._at = self._budget.loop.time()

    def go_local(self, peers: int) -> None:
        """Redis is away: pace at this process's share of the budget, starting spent,
        with what was noted for Redis booked here instead."""
        if self._local is not None:
            return
        share = self._rate * 60.0 / max(1, peers)
        local = LocalBucket(share, spent=max(1.0, share / 60.0))
        if self.new_rate is not None:
            local.set_rate(self.new_rate / max(1, peers))
        if self.delta:
            local.adjust(self.delta)
        if self.available is not None:
            local.cap_available(self.available / max(1, peers))
        self.delta, self.available, self.new_rate = 0.0, None, None
        self._local = local

    def go_shared(self) -> None:
        """Redis is back: the next call goes there (and re-makes the budget spent if
        Redis lost it)."""
        self._local = None
        self.born = SPENT
