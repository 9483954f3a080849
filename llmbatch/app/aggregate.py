"""What the HTML report draws, kept in the text report's one pass over the outputs (an
observer of `llmbatch.app.report.read_report`), in memory that does not grow with them:

- latencies in fixed bins (logarithmic, 12% wide), per model;
- per minute and per file: items finished, tokens, retries (from each line's ``t``);
- tokens and cost by model and by how the answer came (live, batch, cached);
- the most common validation messages and error codes, a few example ids each;
- the endpoints answered, and the Batch API batches (times from the batch record
  beside an output, when it is there; else their ids only).

The header's counts are the text report's own (`Report`): one pass, one set of numbers.
"""

from __future__ import annotations

import bisect
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from llmbatch.app.report import Report, read_report
from llmbatch.core.errors import LLMBatchError
from llmbatch.core.values import State
from llmbatch.files import sidecars
from llmbatch.modes.batch.state import Batch, BatchState
from llmbatch.output.readback import Line

__all__ = ["Aggregates", "Example", "Failure", "Tally", "TopK", "read_aggregates"]

# Bin edges in ms: 1 ms to 1,000 s, twenty a decade (each bin 12% wide).
LATENCY_EDGES: tuple[float, ...] = tuple(10 ** (i / 20) for i in range(121))
TOP_FAILURES = 10
EXAMPLES = 3  # example ids per failure message or code
EXCERPT = 300  # characters of an example's answer shown
SECONDS = 900  # a file's finish times kept per second too, up to this many seconds (a short run)
TRACKED = 2000  # distinct messages counted at once; beyond, the rarer half is forgotten
_MESSAGE = 500  # characters of a message kept as its key

# The answer body's `object`, for the endpoint it came from (merged rows do not say).
_OBJECTS = {
    "chat.completion": "/v1/chat/completions",
    "response": "/v1/responses",
    "text_completion": "/v1/completions",
    "list": "/v1/embeddings",
}


@dataclass(slots=True)
class Tally:
    """Tokens and cost of the lines of one model, or of one way of answering."""

    lines: int = 0
    prompt: int = 0
    cached: int = 0  # of the prompt tokens
    completion: int = 0
    reasoning: int = 0  # of the completion tokens
    cost: float = 0.0
    unpriced: int = 0  # lines with tokens and no price


@dataclass(frozen=True, slots=True)
class Example:
    custom_id: str
    line: int | None  # the input line
    answer: str  # truncated to EXCERPT characters


@dataclass(slots=True)
class Failure:
    count: int = 0
    examples: list[Example] = field(default_factory=list)


class TopK:
    """The most common messages with a few examples each, in bounded memory: past
    `tracked` distinct messages the rarer half is forgotten, so a message that is
    common only later may be undercounted (never overcounted)."""

    def __init__(self, tracked: int = TRACKED) -> None:
        self._tracked = tracked
        self._seen: dict[str, Failure] = {}
        self.total = 0
        self.forgotten = 0  # lines whose message was forgotten

    def add(self, key: str, rec: dict[str, Any], cid: str, line: Any) -> None:
        self.total += 1
        key = key[:_MESSAGE]
        found = self._seen.get(key)
        if found is None:
            if len(self._seen) >= self._tracked:
                self._forget()
            found = self._seen[key] = Failure()
        found.count += 1
        if len(found.examples) < EXAMPLES:
            number = line if isinstance(line, int) and not isinstance(line, bool) else None
            found.examples.append(Example(cid, number, answer_excerpt(rec)))

    def _forget(self) -> None:
        ranked = sorted(self._seen.items(), key=lambda kv: kv[1].count, reverse=True)
        keep = ranked[: self._tracked // 2]
        self.forgotten += sum(f.count for _, f in ranked[self._tracked // 2 :])
        self._seen = dict(keep)

    def top(self, k: int = TOP_FAILURES) -> list[tuple[str, Failure]]:
        return sorted(self._seen.items(), key=lambda kv: kv[1].count, reverse=True)[:k]

    def __len__(self) -> int:
        return len(self._seen)


def answer_excerpt(rec: dict[str, Any]) -> str:
    """The answer a line holds, as text, cut to EXCERPT characters (an answer may be a
    megabyte: it is cut before anything else is done with it)."""
    if "llm_custom_id" in rec:
        value = rec.get("llm_answer")
    else:
        response = rec.get("response")
        value = _body_text(response.get("body")) if isinstance(response, dict) else None
        if value is None and isinstance(rec.get("error"), dict):
            value = rec["error"].get("message")
    if value is None:
        return ""
    if isinstance(value, str):
        return value[:EXCERPT]
    return orjson.dumps(value)[: EXCERPT * 4].decode("utf-8", "replace")[:EXCERPT]


def _body_text(body: Any) -> Any:
    """The text of an answer body of any endpoint, or the body itself."""
    if not isinstance(body, dict):
        return body
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        first = choices[0]
        message = first.get("message")
        if isinstance(message, dict):
            return message.get("content") or message.get("refusal")
        if "text" in first:
            return first["text"]
    return body


class Aggregates:
    """The HTML report's figures (see the module's docstring). `observe` is handed
    every line of ours by `read_report`."""

    def __init__(self, files: list[str]) -> None:
        self.files = files
        self.latency: dict[str, list[int]] = {}  # per model: counts per bin
        self.minutes: list[dict[int, list[int]]] = [{} for _ in files]  # minute: items, tokens, retries
        # The same per second while a file's lines span at most SECONDS of them (None beyond):
        # a short run drawn by the minute would be a point or two.
        self.seconds: list[dict[int, list[int]] | None] = [{} for _ in files]
        self.by_model: dict[str, Tally] = {}
        self.by_mode: dict[str, Tally] = {}
        self.invalid: Counter[str] = Counter()  # invalid lines by cause: refused, truncated, answer
        self.reasons = TopK()  # validation messages of invalid lines
        self.codes = TopK()  # error codes of failed lines
        self.endpoints: Counter[str] = Counter()
        self.batch_lines: Counter[str] = Counter()  # lines answered by each batch
        self.timeline: list[Batch] = []  # the batches' times, from the batch records
        self.unreadable: list[str] = []  # batch records that could not be read

    def observe(
        self, index: int, rec: dict[str, Any], line: Line, fields: dict[str, Any], spent: float | None
    ) -> None:
        model = fields["model"] or "(no answer)"
        latency = fields["latency"]
        if isinstance(latency, int | float) and fields["requests"]:
            bins = self.latency.get(model)
            if bins is None:
                bins = self.latency[model] = [0] * (len(LATENCY_EDGES) + 1)
            bins[bisect.bisect_right(LATENCY_EDGES, latency)] += 1
        tokens = fields["prompt"] + fields["completion"]
        t = fields["t"]
        if isinstance(t, int) and not isinstance(t, bool):
            retries = fields["retries"] if isinstance(fields["retries"], int) else 0
            _tick(self.minutes[index], t // 60000, tokens, retries)
            seconds = self.seconds[index]
            if seconds is not None:
                _tick(seconds, t // 1000, tokens, retries)
                if len(seconds) > SECONDS:
                    self.seconds[index] = None
        via = fields["via"] or "live"
        pairs = [(self.by_mode, via)]
        if fields["model"] or tokens:  # a failure with no answer has no model to name
            pairs.append((self.by_model, model))
        for tallies, key in pairs:
            tally = tallies.get(key)
            if tally is None:
                tally = tallies[key] = Tally()
            tally.lines += 1
            tally.prompt += fields["prompt"]
            tally.cached += fields["cached"]
            tally.completion += fields["completion"]
            tally.reasoning += fields["reasoning"]
            if spent is None:
                tally.unpriced += 1
            else:
                tally.cost += spent
        state = line.state
        if state is State.INVALID:
            cause = fields["cause"]
            self.invalid[cause if cause in ("refused", "truncated") else "answer"] += 1
            self.reasons.add(str(fields["reason"] or "invalid answer"), rec, line.custom_id, fields["line"])
        elif state is State.FAILED:
            self.codes.add(str(fields["code"] or "error"), rec, line.custom_id, fields["line"])
        response = rec.get("response")
        body = response.get("body") if isinstance(response, dict) else None
        if isinstance(body, dict):
            kind = body.get("object")
            endpoint = _OBJECTS.get(kind) if isinstance(kind, str) else None
            self.endpoints[endpoint or ("/v1/moderations" if "results" in body else "(other)")] += 1
        batch_id = fields["batch_id"]
        if isinstance(batch_id, str) and via == "batch":
            self.batch_lines[batch_id] += 1

    def read_batch_records(self, paths: list[Path]) -> None:
        """The batches' created and completed times, from each output's batch record
        (read only); a batch in no record stays on the page by its id alone."""
        for path in paths:
            record = sidecars.batches(path)
            if not record.is_file():
                continue
            try:
                state = BatchState(record, read_only=True)
                try:
                    self.timeline.extend(state.timeline())
                finally:
                    state.close()
            except (LLMBatchError, sqlite3.Error):  # not a record we can read: ids only
                self.unreadable.append(str(record))

    def latency_percentile(self, model: str, p: float) -> float | None:
        """The upper edge of the bin holding the model's `p` percentile (within 12%)."""
        bins = self.latency.get(model)
        total = sum(bins) if bins else 0
        if not bins or not total:
            return None
        rank, seen = p / 100 * total, 0
        for i, n in enumerate(bins):
            seen += n
            if seen >= rank:
                return LATENCY_EDGES[min(i, len(LATENCY_EDGES) - 1)]
        return LATENCY_EDGES[-1]


def _tick(counters: dict[int, list[int]], at: int, tokens: int, retries: int) -> None:
    counts = counters.get(at)
    if counts is None:
        counts = counters[at] = [0, 0, 0]
    counts[0] += 1
    counts[1] += tokens
    counts[2] += retries


def read_aggregates(
    paths: list[Path], *, price_in: float | None = None, price_out: float | None = None
) -> tuple[Report, Aggregates]:
    """The text report and the HTML report's aggregates over `paths`, in one pass."""
    agg = Aggregates([str(p) for p in paths])
    report = read_report(paths, price_in=price_in, price_out=price_out, observe=agg.observe)
    agg.read_batch_records(paths)
    return report, agg
