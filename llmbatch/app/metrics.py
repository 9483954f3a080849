"""The run's figures for Prometheus, the way schedulers are watched: a file in the text
format for node_exporter's textfile collector (`--metrics-file`, the cron way), and
pushes to a Pushgateway grouped by job and shard (`--pushgateway`, the Kubernetes Job
way). Both are rewritten every `--metrics-every` seconds from a thread of their own
and once more at the end, with the exit code.

Like the display, this only reads `Stats`: a collector turns the counters into metric
families each time it is collected, so the hot path pays nothing. A file or gateway
that cannot be written is one warning, and the run goes on.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, push_to_gateway, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from llmbatch.app.display import spent_usd
from llmbatch.app.settings import DEFAULT_METRICS_EVERY, DEFAULT_METRICS_JOB
from llmbatch.core.stats import LATENCY_BUCKETS_MS, Stats
from llmbatch.cost.prices import Price
from llmbatch.schedule.limits import PACER_STATES

__all__ = ["Metrics", "RunCollector"]

# A push waits at most this long: a gateway that hangs must not hold the end of a run.
PUSH_TIMEOUT = 5.0
# The states an item can end a run in, disjoint (their sum is the lines accounted for).
ITEM_STATES = ("valid", "invalid", "failed", "rejected", "skipped", "kept", "blank")


class RunCollector(Collector):
    """Reads a run's `Stats` into Prometheus metric families each time it is collected.
    `labels` go on every sample (the shard, in a file: a node may hold several)."""

    def __init__(self, stats: Stats, *, labels: dict[str, str] | None = None, mode: str = "live") -> None:
        self.stats = stats
        self.labels = dict(labels or {})
        self.mode = mode
        self.price: Price | None = None
        self.endpoint: str | None = None
        # The wall clock's start: Stats keeps the monotonic one.
        self.started_at = time.time() - (time.monotonic() - stats.started)
        self.ended_at: float | None = None
        self.exit_code: int | None = None

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        keys = list(self.labels)
        values = list(self.labels.values())

        def gauge(name: str, doc: str, value: float | None, **extra: str) -> Iterator[Metric]:
            if value is None:
                return
            family = GaugeMetricFamily(name, doc, labels=[*keys, *extra])
            family.add_metric([*values, *extra.values()], value)
            yield family

        def counter(name: str, doc: str, value: float | None) -> Iterator[Metric]:
            if value is None:
                return
            family = CounterMetricFamily(name, doc, labels=keys)
            family.add_metric(values, value)
            yield family

        def by(
            name: str, doc: str, label: str, counts: Mapping[str, float], *, gauge: bool = False
        ) -> Metric:
            family: CounterMetricFamily | GaugeMetricFamily
            if gauge:
                family = GaugeMetricFamily(name, doc, labels=[*keys, label])
            else:
                family = CounterMetricFamily(name, doc, labels=[*keys, label])
            for key, n in counts.items():
                family.add_metric([*values, key], n)
            return family

        from llmbatch import __version__

        info = {"model": s.model or "", "endpoint": self.endpoint or "", "mode": self.mode}
        yield from gauge(
            "llmbatch_run_info", "The run: model, endpoint, mode, version.", 1, **info, version=__version__
        )
        yield from gauge(
            "llmbatch_run_start_time_seconds", "When the run started (Unix time).", self.started_at
        )
        yield from gauge("llmbatch_run_end_time_seconds", "When the run ended (Unix time).", self.ended_at)
        yield from gauge("llmbatch_run_exit_code", "The run's exit code, once it ended.", self.exit_code)
        yield from gauge("llmbatch_run_duration_seconds", "Seconds the run has taken so far.", s.elapsed)
        yield from gauge("llmbatch_items_expected", "Items in scope (the input, or this shard).", s.total)
        kept = sum(dict(s.kept).values()) - s.kept["stale"]  # a stale line kept is one skipped too
        ended = (s.valid, s.invalid, s.failed, s.rejected, s.skipped, kept, s.blank)
        states = dict(zip(ITEM_STATES, ended, strict=True))
        yield by("llmbatch_items_total", "Input lines by how they ended.", "state", states)
        causes = {"refused": s.refused, "truncated": s.truncated}
        yield by(
            "llmbatch_items_cause_total",
            "Items written refused or truncated.",
            "cause",
            causes,
        )
        yield from counter("llmbatch_items_cached_total", "Items answered from the response cache.", s.cached)
        yield from counter("llmbatch_requests_total", "HTTP requests sent, every attempt.", s.requests)
        yield from counter("llmbatch_answers_total", "2xx answers received, re-asks included.", s.answers)
        yield from counter("llmbatch_http_429_total", "429 answers.", s.http_429)
        yield from counter(
            "llmbatch_capacity_429_total", "429s for a tier without capacity (flex).", s.capacity_429
        )
        yield by(
            "llmbatch_retries_total",
            "Transport retries by cause.",
            "cause",
            dict(s.retries),
        )
        yield from counter("llmbatch_reasks_total", "Requests repeated for an invalid answer.", s.reasks)
        tokens = {"prompt": s.prompt_tokens, "completion": s.completion_tokens}
        yield by("llmbatch_tokens_total", "Tokens billed, by kind.", "kind", tokens)
        yield from counter(
            "llmbatch_cached_tokens_total", "Of the prompt tokens, read from cache.", s.cached_tokens
        )
        yield from counter(
            "llmbatch_reasoning_tokens_total", "Of the completion tokens, reasoning.", s.reasoning_tokens
        )
        yield from counter(
            "llmbatch_cost_usd_total", "What the run spent, in USD (when priced).", spent_usd(s, self.price)
        )
        yield from gauge("llmbatch_requests_in_flight", "Requests on their way.", s.in_flight)
        rpm_limit, tpm_limit = s.limits()
        yield from gauge(
            "llmbatch_limit_requests_per_minute", "The requests limit, given or learned.", rpm_limit
        )
        yield from gauge("llmbatch_limit_tokens_per_minute", "The tokens limit, given or learned.", tpm_limit)
        yield from gauge("llmbatch_pace_requests_per_minute", "The pace allowed now.", s.paced_rpm())
        pacer = s.pacer
        if pacer is not None:
            now = pacer.condition()[0]
            flags = {state: float(state == now) for state in PACER_STATES}
            yield by("llmbatch_pacer_state", "The pacer's state (1: now).", "state", flags, gauge=True)
            yield from counter(
                "llmbatch_pace_cuts_total", "Times the pace was lowered after 429s.", pacer.cuts
            )
        yield self._latency()
        if s.batches:
            statuses: dict[str, float] = {}
            for status, *_ in list(s.batches.values()):
                statuses[status] = statuses.get(status, 0) + 1
            yield by("llmbatch_batches", "Batch API batches by status.", "status", statuses, gauge=True)

    def _latency(self) -> Metric:
        s = self.stats
        family = HistogramMetricFamily(
            "llmbatch_request_latency_seconds", "Live answers' latency.", labels=list(self.labels)
        )
        counts = list(s.latency_counts)
        buckets, total = [], 0
        for bound, n in zip((*LATENCY_BUCKETS_MS, math.inf), counts, strict=True):
            total += n
            buckets.append(("+Inf" if bound == math.inf else repr(bound / 1000), total))
        family.add_metric(list(self.labels.values()), buckets, sum_value=s.latency_sum_ms / 1000)
        return family


class Metrics:
    """Publishes a run's metrics to a file, a Pushgateway, or both: every `every`
    seconds from a daemon thread (`start`), and once at the end (`finish`), with the
    exit code. A sink that fails is said once through `warn`; the run goes on."""

    def __init__(
        self,
        stats: Stats,
        *,
        file: Path | None = None,
        gateway: str | None = None,
        job: str = DEFAULT_METRICS_JOB,
        shard: str | None = None,
        every: float = DEFAULT_METRICS_EVERY,
        mode: str = "live",
        warn: Callable[[str], None] = print,
    ) -> None:
        labels = {"shard": shard} if shard is not None else {}
        self.collector = RunCollector(stats, labels=labels, mode=mode)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.file = file
        self.gateway = gateway
        self.job = job
        # Pushgateway groups by job and shard (a run without --shard is shard 0).
        self.grouping = {"shard": shard if shard is not None else "0"}
        self.every = every
        self.warn = warn
        self.warned: set[str] = set()
        self._lock = threading.Lock()  # one publish at a time: the ticker's or the end's
        self._stopping = threading.Event()
        self._ticker: threading.Thread | None = None

    def set_price(self, price: Price | None) -> None:
        self.collector.price = price

    def start(self) -> None:
        """Publish now, then every `every` seconds until `finish`."""
        self.publish()
        self._ticker = threading.Thread(target=self._tick, name="llmbatch-metrics", daemon=True)
        self._ticker.start()

    def finish(self, exit_code: int) -> None:
        """Stop the ticker and publish the end: its time and the exit code."""
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join()
        self.collector.ended_at = time.time()
        self.collector.exit_code = int(exit_code)
        self.publish()

    def publish(self) -> None:
        """Rewrite the file (atomically: a temporary file renamed over it) and push."""
        with self._lock:
            if self.file is not None:
                try:
                    write_to_textfile(os.fspath(self.file), self.registry)
                except OSError as exc:
                    self._failed(
                        "file", f"--metrics-file {self.file} cannot be written ({exc.strerror or exc})"
                    )
            if self.gateway is not None:
                try:
                    push_to_gateway(
                        self.gateway,
                        job=self.job,
                        registry=self.registry,
                        grouping_key=self.grouping,
                        timeout=PUSH_TIMEOUT,
                    )
                except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
                    self._failed("gateway", f"--pushgateway {self.gateway} cannot be pushed to ({exc})")

    def _failed(self, sink: str, message: str) -> None:
        if sink not in self.warned:
            self.warned.add(sink)
            self.warn(f"warning: {message}; the run goes on")

    def _tick(self) -> None:
        while not self._stopping.wait(self.every):
            self.publish()
