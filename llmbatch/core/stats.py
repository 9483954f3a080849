"""The run's counters. Every stage adds to them (plain attribute increments: nothing on
the hot path formats, locks or allocates); the display and the summary only read."""

from __future__ import annotations

import bisect
import time
from collections import Counter
from typing import Any, Protocol

from llmbatch.core.errors import Stop

__all__ = ["LATENCY_BUCKETS_MS", "NOT_VALID_SHOWN", "Pacer", "Stats", "add_answer", "add_item"]

# How many of the items written not valid the summary names.
NOT_VALID_SHOWN = 10
# The upper bounds of the answers' latency histogram, in milliseconds (the metrics'
# `llmbatch_request_latency_seconds`): from a local server's tens of milliseconds to a
# long answer's minutes.
LATENCY_BUCKETS_MS = (50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000)


class Pacer(Protocol):
    """What the display reads of the limits (see `llmbatch.schedule.limits.Limits`)."""

    def status(self) -> str | None: ...

    def condition(self) -> tuple[str, str | None]:
        """The state in one word, and `status`'s words."""
        ...

    def paced_rpm(self) -> float | None: ...

    def known_limits(self) -> tuple[float | None, float | None]: ...

    @property
    def cuts(self) -> int:
        """Times the pace was lowered after 429s."""
        ...


class Stats:
    __slots__ = (
        "answers",
        "batches",
        "blank",
        "by_model",
        "by_way",
        "cache_write_tokens",
        "cached",
        "cached_tokens",
        "capacity_429",
        "completion_tokens",
        "counts_skipped",
        "deadline",
        "done",
        "escalated",
        "failed",
        "fallback_tokens",
        "fallbacks",
        "finished",
        "http_429",
        "in_flight",
        "invalid",
        "kept",
        "last_error",
        "latency_counts",
        "latency_sum_ms",
        "model",
        "not_valid",
        "pacer",
        "phases",
        "prompt_tokens",
        "reasks",
        "reasoning_tokens",
        "redone",
        "refused",
        "rejected",
        "requests",
        "retries",
        "rpm_limit",
        "skipped",
        "started",
        "stop",
        "total",
        "total_exact",
        "tpm_limit",
        "truncated",
        "valid",
    )

    def __init__(self) -> None:
        self.total: int | None = None  # items expected (input lines), if known
        self.total_exact = True  # False when `total` is estimated from the file size
        self.done = 0  # items written to the output this run (valid + invalid + failed)
        self.valid = 0
        self.invalid = 0  # written with valid: false after --max-requests answers
        self.failed = 0  # written with an error (request refused, retries exhausted)
        self.refused = 0  # of the invalid, those whose last answer was the model's refusal
        self.truncated = 0  # written with an answer cut at its ceiling (valid or invalid)
        self.rejected = 0  # bad input lines
        # The first items written not valid, each as "ID (state: code)", for the summary.
        self.not_valid: list[str] = []
        self.skipped = 0  # already in the output (resume)
        self.blank = 0  # blank input lines, passed over
        self.cached = 0  # answered from the response cache, no request
        # Batch API mode: per batch id, (status, completed, failed, total, when submitted).
        self.batches: dict[str, tuple[str, int, int, int, float]] = {}
        self.redone: Counter[str] = Counter()  # items sent again, by why (a rerun)
        self.kept: Counter[str] = Counter()  # written lines kept although not valid, or stale
        # Whether `total` counts the items skipped and kept (a whole rerun), or only
        # those in scope (--max-items).
        self.counts_skipped = True
        self.in_flight = 0
        self.requests = 0  # attempts: HTTP requests sent, 429s and failed tries included
        self.answers = 0  # 2xx answers received (each one validated; re-asks included)
        # The last error text of each cause (retries by cause, and failures).
        self.last_error: dict[str, str] = {}
        # The limits, as the display reads them: what holds requests back now, the pace
        # allowed, the limits known (given or learned).
        self.pacer: Pacer | None = None
        self.reasks = 0  # requests repeated because an answer was invalid
        self.retries: Counter[str] = Counter()  # transport retries by cause
        self.http_429 = 0
        # 429s that said the tier had no capacity (flex): retried, the pace kept; and the
        # items sent on the default tier after them (--flex-fallback).
        self.capacity_429 = 0
        self.fallbacks = 0
        # Of the tokens above, those of answers on the default tier after a fallback
        # (prompt, completion, cached): they cost the default tier's price.
        self.fallback_tokens = [0, 0, 0]
        # --escalate: items moved on to the next model, and per model (in the order first
        # met) [items written, answers, prompt, completion, cached tokens].
        self.escalated = 0
        self.by_model: dict[str, list[int]] = {}
        # --deadline: the same rows by way (batch, live), and what the deadline assumed
        # and did (`llmbatch.modes.batch.golive`), for the panel and the summary.
        self.by_way: dict[str, list[int]] = {}
        self.deadline: dict[str, Any] | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0  # of the prompt tokens, read from the provider's cache
        self.reasoning_tokens = 0  # of the completion tokens, spent reasoning
        self.cache_write_tokens = 0  # of the prompt tokens, written to the provider's cache
        self.started = time.monotonic()
        self.finished: float | None = None
        # Why the run is stopping early, once it is: the one place that says so.
        self.stop: Stop | None = None
        self.model: str | None = None
        # Seconds spent outside sending: reading the output back, the rerun's pre-pass,
        # the compaction. A rerun of a big file is judged by them.
        self.phases: dict[str, float] = {}
        self.rpm_limit: float | None = None
        self.tpm_limit: float | None = None
        # The live answers' latencies: a count per bucket of LATENCY_BUCKETS_MS (the last
        # one: slower than all), and their sum.
        self.latency_counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self.latency_sum_ms = 0.0

    def answered_in(self, latency_ms: float) -> None:
        """Count one live answer's latency in the histogram."""
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
        self.latency_sum_ms += latency_ms

    @property
    def elapsed(self) -> float:
        end = self.finished if self.finished is not None else time.monotonic()
        return max(end - self.started, 1e-9)

    @property
    def stopped(self) -> bool:
        return self.stop is not None

    @property
    def stop_reason(self) -> str | None:
        return self.stop.reason if self.stop is not None else None

    @property
    def accounted(self) -> int:
        """Input lines that have an outcome: written, rejected, skipped as done, kept,
        blank."""
        n = self.done + self.rejected + self.blank
        if self.counts_skipped:
            n += self.skipped + sum(self.kept.values()) - self.kept["stale"]  # stale: also one of those
        return n

    def paced_rpm(self) -> float | None:
        return self.pacer.paced_rpm() if self.pacer is not None else None

    def limits(self) -> tuple[float | None, float | None]:
        """(requests/min, tokens/min) limits, given or learned from the server."""
        if self.pacer is not None:
            rpm, tpm = self.pacer.known_limits()
            return rpm or self.rpm_limit, tpm or self.tpm_limit
        return self.rpm_limit, self.tpm_limit

    def waiting(self) -> str | None:
        """What holds requests back right now, in words, if anything."""
        return self.pacer.status() if self.pacer is not None else None

    @property
    def rpm(self) -> float:
        return self.requests / self.elapsed * 60

    @property
    def tpm(self) -> float:
        return (self.prompt_tokens + self.completion_tokens) / self.elapsed * 60

    def eta(self) -> float | None:
        """Seconds left at the pace of this run so far, if it can be told."""
        if self.total is None or self.done == 0:
            return None
        left = max(self.total - self.accounted, 0)
        return left / (self.done / self.elapsed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "done": self.done,
            "valid": self.valid,
            "invalid": self.invalid,
            "failed": self.failed,
            "refused": self.refused,
            "truncated": self.truncated,
            "rejected": self.rejected,
            "skipped": self.skipped,
            "blank": self.blank,
            "cached": self.cached,
            "redone": dict(self.redone),
            "kept": dict(self.kept),
            "requests": self.requests,
            "attempts": self.requests,
            "answers": self.answers,
            "reasks": self.reasks,
            "retries": dict(self.retries),
            "http_429": self.http_429,
            "capacity_429": self.capacity_429,
            "fallbacks": self.fallbacks,
            "escalated": self.escalated,
            "pace_cuts": self.pacer.cuts if self.pacer is not None else 0,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "elapsed_s": round(self.elapsed, 3),
            "requests_per_min": round(self.rpm, 1),
            "tokens_per_min": round(self.tpm, 1),
            "stopped": self.stopped,
            "stop_reason": self.stop_reason,
            "model": self.model,
            "phases_s": {k: round(v, 3) for k, v in self.phases.items()},
        }


def _row(table: dict[str, list[int]], key: str) -> list[int]:
    row = table.get(key)
    if row is None:
        row = table[key] = [0, 0, 0, 0, 0]
    return row


def add_answer(table: dict[str, list[int]], key: str, prompt: int, completion: int, cached: int) -> None:
    """An answer's usage in `key`'s row of `table` (`Stats.by_model`, `Stats.by_way`:
    [items, answers, prompt, completion, cached tokens])."""
    row = _row(table, key)
    row[1] += 1
    row[2] += prompt
    row[3] += completion
    row[4] += cached


def add_item(table: dict[str, list[int]], key: str) -> None:
    """An item written, in `key`'s row of `table`."""
    _row(table, key)[0] += 1
