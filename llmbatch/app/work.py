"""What a run sends: everything (a first run), or what the rerun rules say of each
input line, judged in a pre-pass over the whole input before anything is sent
(`llmbatch.rerun.plan`); less, in the Batch API mode, what is already in a batch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from llmbatch.app.checks import to_stdout
from llmbatch.app.settings import Settings
from llmbatch.core.errors import ConfigError, InputError
from llmbatch.core.stats import Stats
from llmbatch.core.values import Request
from llmbatch.files.idset import IdSet
from llmbatch.input.source import Source
from llmbatch.modes.batch.state import BatchState
from llmbatch.output.records import Format
from llmbatch.rerun.plan import OutputIndex, Plan, Rules, make_plan
from llmbatch.validate.validator import Validator

__all__ = ["StaleAnswers", "Work", "not_in_batches", "phase", "plan_work", "rerun_note"]


class StaleAnswers(ConfigError):
    """The output holds answers made for a different request, and no rule says what to
    do with them: nothing is sent (exit 2)."""

    def __init__(self, n: int, output: Path) -> None:
        answers = "1 answer" if n == 1 else f"{n:,} answers"
        super().__init__(
            f"{answers} in {output} were made for a different request (the prompt, model or "
            "parameters changed); nothing was sent. Rerun with --redo stale to ask them again, "
            "or --keep-stale to keep them"
        )
        self.count = n


Work = tuple[OutputIndex, "Plan | None", Iterator[Request | InputError]]


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def rerun_note(plan: Plan, index: OutputIndex, output: Path) -> str:
    parts = [f"resuming: {len(index):,} items already in {output} ({plan.skipped:,} done)"]
    if plan.redo:
        parts.append(f"redoing {plan.redo.total():,} ({_counts(plan.redo)})")
    kept = {k: v for k, v in plan.kept.items() if v}
    if kept:
        parts.append(f"kept {_counts(kept)}")
    if index.no_fp:
        parts.append(
            f"{index.no_fp:,} lines carry no fingerprint (an older llmbatch wrote them): kept as they are"
        )
    return "; ".join(parts)


def _counts(c: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(c.items()))


async def plan_work(
    settings: Settings, source: Source, rules: Rules, *, server: str, validator: Validator, stats: Stats
) -> Work:
    """What this run sends: everything (a first run), or what the rerun rules say, judged
    in a pre-pass over the whole input before anything is sent."""
    loop = asyncio.get_running_loop()
    output = settings.output
    with phase(stats, "read_output"):
        if to_stdout(settings):
            index = OutputIndex(0)  # nothing to read back: standard output starts afresh
        else:
            index = await loop.run_in_executor(
                None, lambda: OutputIndex.scan(output, offsets=rules.revalidate)
            )
    if not len(index) and not to_stdout(settings) and not settings.force and _nonempty(output):
        raise ConfigError(
            f"{output} does not look like an llmbatch output: this run would append its results to it; "
            "choose another --output (or add --force to append anyway)"
        )
    if not len(index):
        # Counted up front when cheap (about a second per GB): the total for the progress
        # bar, and the size of the duplicate-id table, allocated once instead of grown.
        stats.total = lines = await loop.run_in_executor(None, source.count)
        requests = source.requests(expected=lines or 0, stats=stats)
        if source.shard is not None and source.shard.count > 1 and lines is not None:
            stats.total, stats.total_exact = round(lines / source.shard.count), False  # this shard's share
        if rules.max_items is not None:
            stats.counts_skipped = False
            stats.total = rules.max_items
            requests = _first_items(requests, rules.max_items)
        return index, None, requests
    other: Format = "merged" if settings.output_format == "batch" else "batch"
    if index.formats[other]:
        raise ConfigError(
            f"{output} holds {other} lines, and this run would write {settings.output_format} ones: "
            f"{'drop' if other == 'merged' else 'add'} --merged, or choose another --output"
        )

    def pre_pass() -> Plan:
        return make_plan(source, index, rules, server=server, validator=validator, output=output, stats=stats)

    with phase(stats, "pre_pass"):
        plan = await loop.run_in_executor(None, pre_pass)
    if plan.stale:
        raise StaleAnswers(plan.stale, output)
    stats.skipped = plan.skipped
    stats.redone = plan.redo
    stats.kept = plan.kept
    stats.total = plan.items + plan.rejects + stats.blank
    if rules.max_items is not None:
        stats.counts_skipped = False
        stats.total = plan.work
    until = plan.last_line if rules.max_items is not None else None
    return index, plan, source.planned(plan.todo, plan.bad, plan.dupes, plan.renamed, until=until)


@contextlib.contextmanager
def phase(stats: Stats, name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        stats.phases[name] = time.perf_counter() - started


def _first_items(requests: Iterator[Request | InputError], n: int) -> Iterator[Request | InputError]:
    """The input up to its `n`th request (--max-items on a first run)."""
    for item in requests:
        yield item
        if isinstance(item, Request):
            n -= 1
            if n == 0:
                return


def not_in_batches(
    requests: Iterator[Request | InputError], state: BatchState
) -> Iterator[Request | InputError]:
    """The work, less the items already in a batch (a rerun collects those)."""
    known = IdSet(0)
    for cid in state.known_ids():
        known.add(cid)
    if not len(known):
        yield from requests
        return
    for item in requests:
        if isinstance(item, Request) and item.custom_id in known:
            continue
        yield item
