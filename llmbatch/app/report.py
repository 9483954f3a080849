"""`llmbatch report OUTPUT...`: what finished outputs hold, without writing a script.

Counts (valid, invalid, failed by error code, refused, truncated, how answered), tokens,
cost, the most common reasons answers were invalid, the latency percentiles, when the
work finished (from each line's ``t``) and how many answers items needed, read from
output files of either format (plain or compressed, one or several: a sharded run's
outputs). Streams: memory is the counters, one hash per id and one number per latency.
`read_report` hands each line's figures to an observer too: the HTML report
(`llmbatch.app.aggregate`) keeps its charts' aggregates in the same pass.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmbatch.app.format import usd
from llmbatch.core.errors import ConfigError
from llmbatch.core.values import State
from llmbatch.cost.prices import Prices, cost
from llmbatch.files.idset import IdSet
from llmbatch.files.jsonl import open_lines
from llmbatch.output.readback import Line, record_of

__all__ = ["Observer", "Report", "format_report", "read_report"]

# What an observer of the pass is given per line of ours: the index of its file, the
# line parsed, its rerun view, its figures (`_fields`) and its cost (None: unpriced).
Observer = Callable[[int, dict[str, Any], Line, dict[str, Any], float | None], None]

TOP_REASONS = 5


@dataclass(slots=True)
class Report:
    files: list[str] = field(default_factory=list)
    lines: int = 0
    ids: int = 0
    repeated: int = 0  # lines for an id seen before (an output not compacted yet)
    other: int = 0  # lines that are not llmbatch's
    states: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)  # by error code
    via: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    causes: Counter[str] = field(default_factory=Counter)  # refused, truncated
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # of the completion tokens
    cost_usd: float = 0.0
    unpriced: Counter[str] = field(default_factory=Counter)  # lines by model with no price
    models: Counter[str] = field(default_factory=Counter)
    latencies: array[float] = field(default_factory=lambda: array("d"))
    first_t: int | None = None  # the earliest and latest finish times (Unix ms)
    last_t: int | None = None
    untimed: int = 0  # lines with no finish time (an older llmbatch wrote them)
    answers: Counter[int] = field(default_factory=Counter)  # items by the answers they needed
    answers_valid: Counter[int] = field(default_factory=Counter)  # of those, the valid ones
    _ranked: tuple[int, dict[float, float | None]] | None = None  # percentiles, for so many latencies

    def percentiles(self, *ps: float) -> list[float | None]:
        """The latency percentiles asked for (nearest rank), from one sort (kept: the
        text and the page ask for the same ones, and a million latencies sort slowly)."""
        if self._ranked is None or self._ranked[0] != len(self.latencies):
            values = sorted(self.latencies)
            self._ranked = (len(values), {p: _rank(values, p) for p in (50, 90, 95, 99)})
        known = self._ranked[1]
        if not all(p in known for p in ps):
            values = sorted(self.latencies)
            return [_rank(values, p) for p in ps]
        return [known[p] for p in ps]

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "lines": self.lines,
            "ids": self.ids,
            "repeated_lines": self.repeated,
            "other_lines": self.other,
            "valid": self.states[State.VALID.value],
            "invalid": self.states[State.INVALID.value],
            "failed": self.states[State.FAILED.value],
            "failed_by_code": dict(self.failed.most_common()),
            "refused": self.causes["refused"],
            "truncated": self.causes["truncated"],
            "answered_via": dict(self.via.most_common()),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "unpriced_lines_by_model": dict(self.unpriced),
            "models": dict(self.models.most_common()),
            "invalid_reasons": dict(self.reasons.most_common(TOP_REASONS)),
            "latency_ms": dict(zip(("p50", "p95", "p99"), self.percentiles(50, 95, 99), strict=True)),
            "first_finished_ms": self.first_t,
            "last_finished_ms": self.last_t,
            "lines_without_finish_time": self.untimed,
            "items_by_answers": {str(n): self.answers[n] for n in sorted(self.answers)},
            "valid_by_answers": {str(n): self.answers_valid[n] for n in sorted(self.answers)},
        }


def _rank(values: list[float], p: float) -> float | None:
    return values[max(0, math.ceil(p / 100 * len(values)) - 1)] if values else None


def read_report(
    paths: list[Path],
    *,
    price_in: float | None = None,
    price_out: float | None = None,
    observe: Observer | None = None,
) -> Report:
    """The report over `paths`, in one pass each; `observe` sees every line of ours."""
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"output file not found: {path}")
    seen = IdSet()  # grows as it goes: counting the lines first would read every file twice
    report = Report(files=[str(p) for p in paths])
    prices = Prices(price_in=price_in, price_out=price_out)
    for index, path in enumerate(paths):
        with open_lines(path) as f:
            for raw in f:
                if raw.strip():
                    _count(report, raw, seen, prices, index, observe)
    report.ids = len(seen)
    return report


def _count(
    report: Report,
    raw: bytes,
    seen: IdSet,
    prices: Prices,
    index: int = 0,
    observe: Observer | None = None,
) -> None:
    report.lines += 1
    ours = record_of(raw)
    if ours is None:
        report.other += 1
        return
    rec, line = ours
    if not seen.add(line.custom_id):
        report.repeated += 1
    report.states[line.state.value] += 1
    fields = _fields(rec)
    via = fields["via"] or "live"
    report.via[via] += 1
    if line.state is State.FAILED:
        report.failed[fields["code"] or "error"] += 1
    elif line.state is State.INVALID and fields["reason"]:
        report.reasons[fields["reason"]] += 1
    if isinstance(fields["cause"], str):
        report.causes[fields["cause"]] += 1
    prompt, completion, cached = fields["prompt"], fields["completion"], fields["cached"]
    report.prompt_tokens += prompt
    report.completion_tokens += completion
    report.cached_tokens += cached
    report.reasoning_tokens += fields["reasoning"]
    requests = fields["requests"]
    if fields["latency"] is not None and requests:
        report.latencies.append(float(fields["latency"]))
    _count_time(report, fields["t"])
    if isinstance(requests, int) and requests > 0:
        report.answers[requests] += 1
        if line.state is State.VALID:
            report.answers_valid[requests] += 1
    model = fields["model"]
    if model:
        report.models[model] += 1
    spent: float | None = 0.0
    if prompt or completion:
        written = fields["written"]  # cache writes: Anthropic bills them above the input price
        spent = cost(prices.of(model, batch=via == "batch"), prompt, completion, cached, written)
        if spent is None:
            report.unpriced[model or "(no model)"] += 1
        else:
            report.cost_usd += spent
    if observe is not None:
        observe(index, rec, line, fields, spent)


def _count_time(report: Report, t: Any) -> None:
    if not isinstance(t, int) or isinstance(t, bool):
        report.untimed += 1
        return
    if report.first_t is None or t < report.first_t:
        report.first_t = t
    if report.last_t is None or t > report.last_t:
        report.last_t = t


def _fields(rec: dict[str, Any]) -> dict[str, Any]:
    """The figures a report needs, from a line of either format."""
    if "llm_custom_id" in rec:
        reason = rec.get("llm_error") if rec.get("llm_state") == State.INVALID.value else None
        return {
            "via": rec.get("llm_via"),
            "code": rec.get("llm_error_code"),
            "reason": reason,
            "prompt": int(rec.get("llm_prompt_tokens") or 0),
            "completion": int(rec.get("llm_completion_tokens") or 0),
            "cached": int(rec.get("llm_cached_tokens") or 0),
            "written": int(rec.get("llm_cache_write_tokens") or 0),
            "reasoning": int(rec.get("llm_reasoning_tokens") or 0),
            "latency": rec.get("llm_latency_ms"),
            "requests": rec.get("llm_requests"),
            "model": rec.get("llm_model"),
            "cause": rec.get("llm_cause"),
            "t": rec.get("llm_t"),
            "retries": rec.get("llm_retries"),
            "batch_id": rec.get("llm_batch_id"),
            "line": rec.get("llm_line"),
        }
    meta: dict[str, Any] = rec["llmbatch"] if isinstance(rec.get("llmbatch"), dict) else {}
    usage: dict[str, Any] = meta["usage"] if isinstance(meta.get("usage"), dict) else {}
    error: dict[str, Any] = rec["error"] if isinstance(rec.get("error"), dict) else {}
    response: dict[str, Any] = rec["response"] if isinstance(rec.get("response"), dict) else {}
    body: dict[str, Any] = response["body"] if isinstance(response.get("body"), dict) else {}
    return {
        "via": meta.get("via"),
        "code": error.get("code"),
        "reason": error.get("message") if error.get("code") == "invalid_answer" else None,
        "prompt": int(usage.get("prompt_tokens") or 0),
        "completion": int(usage.get("completion_tokens") or 0),
        "cached": int(usage.get("cached_tokens") or 0),
        "written": int(usage.get("cache_write_tokens") or 0),
        "reasoning": int(usage.get("reasoning_tokens") or 0),
        "latency": meta.get("latency_ms"),
        "requests": meta.get("requests"),
        "model": body.get("model") if isinstance(body.get("model"), str) else None,
        "cause": meta.get("cause"),
        "t": meta.get("t"),
        "retries": meta.get("retries"),
        "batch_id": meta.get("batch_id"),
        "line": meta.get("line"),
    }


def format_report(report: Report) -> str:
    """The report as a few lines for a terminal."""
    d = report.as_dict()
    failed = ", ".join(f"{code} {n:,}" for code, n in report.failed.most_common())
    lines = [
        f"files:        {len(report.files)} ({', '.join(report.files)})",
        f"lines:        {report.lines:,} ({report.ids:,} ids"
        + (f", {report.repeated:,} lines repeat an id" if report.repeated else "")
        + (f", {report.other:,} not llmbatch's" if report.other else "")
        + ")",
        f"valid:        {d['valid']:,}   invalid: {d['invalid']:,}   failed: {d['failed']:,}"
        + (f" ({failed})" if failed else "")
        + (f"   refused: {d['refused']:,}" if d["refused"] else "")
        + (f"   truncated: {d['truncated']:,}" if d["truncated"] else ""),
        "answered:     " + ", ".join(f"{via} {n:,}" for via, n in report.via.most_common()),
        f"tokens:       {report.prompt_tokens:,} in"
        + (f" ({report.cached_tokens:,} cached)" if report.cached_tokens else "")
        + f", {report.completion_tokens:,} out"
        + (f" ({report.reasoning_tokens:,} reasoning)" if report.reasoning_tokens else ""),
        f"cost:         {usd(report.cost_usd)}"
        + (
            f" (and {sum(report.unpriced.values()):,} lines unpriced: {', '.join(report.unpriced)};"
            " give --price-in/--price-out)"
            if report.unpriced
            else ""
        ),
    ]
    p50, p95, p99 = report.percentiles(50, 95, 99)
    if p50 is not None:
        lines.append(f"latency ms:   p50 {p50:,.0f}   p95 {p95:,.0f}   p99 {p99:,.0f}")
    lines.append(f"finished:     {finished_span(report)}")
    if report.answers:
        lines.append("per item:     " + answers_needed(report))
    if report.reasons:
        lines.append("invalid, most common reasons:")
        lines.extend(f"  {n:>6,}  {reason}" for reason, n in report.reasons.most_common(TOP_REASONS))
    return "\n".join(lines)


def when(ms: int) -> str:
    """A finish time, as a person reads it (UTC, to the second)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def finished_span(report: Report) -> str:
    """When the work finished, first and last line, and how many lines cannot say."""
    if report.first_t is None or report.last_t is None:
        span = "unknown (no line carries its finish time)"
    else:
        first, last = when(report.first_t), when(report.last_t)
        span = f"{first} to {last[11:] if last[:10] == first[:10] else last} UTC"
        if report.untimed:
            span += f"; {report.untimed:,} lines without a finish time (an older llmbatch): timeline unknown"
    return span


def answers_needed(report: Report) -> str:
    """How many items needed 1, 2, 3... answers, and how many of them ended valid."""
    return ", ".join(
        f"{n} answer{'s' if n != 1 else ''}: {report.answers[n]:,} ({report.answers_valid[n]:,} valid)"
        for n in sorted(report.answers)
    )
