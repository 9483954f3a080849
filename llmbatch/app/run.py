"""One `llmbatch run`, from settings to exit code: the composition root. It puts the
parts together (the checks of `llmbatch.app.checks`, the work of `llmbatch.app.work`,
the parts of `llmbatch.app.wiring`), hands the signals to the run's one control, runs
the live engine or the Batch API mode, and ends with the summary and the exit code."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import orjson
from rich.console import Console

from llmbatch.app.checks import (
    BATCH_WAYS,
    check_api_key,
    check_output,
    check_stdout,
    open_batches_check,
    start_fresh,
    to_stdout,
)
from llmbatch.app.display import Display, choose_mode
from llmbatch.app.settings import Settings
from llmbatch.app.summary import render_summary, summary_dict
from llmbatch.app.wiring import (
    batch_api,
    batches_done,
    for_shard,
    join_budget,
    make_provider,
    run_price,
    run_tier,
    schema_note,
    server_of,
    source_for,
)
from llmbatch.app.work import StaleAnswers, not_in_batches, phase, plan_work, rerun_note
from llmbatch.core.errors import ConfigError, ExitCode, Stop, worst
from llmbatch.core.stats import Stats
from llmbatch.cost.prices import Price
from llmbatch.cost.spend import SpendingCap
from llmbatch.files.locking import OutputLock
from llmbatch.input.source import Source
from llmbatch.modes.batch.state import BatchState
from llmbatch.modes.control import RunControl
from llmbatch.modes.deadline import Deadline, parse_deadline
from llmbatch.modes.live.engine import Engine, EngineConfig, Job
from llmbatch.modes.live.lookahead import grouped
from llmbatch.modes.outcome import Outcomes
from llmbatch.output.rewrite import compact
from llmbatch.output.writers import InOrder, OutputFile, RejectsFile, StderrRejects
from llmbatch.providers.base import Provider
from llmbatch.rerun.cache import ResponseCache
from llmbatch.rerun.plan import Rules, parse_redo
from llmbatch.scale.shard import parse_shard
from llmbatch.schedule.limits import Limits
from llmbatch.validate.validator import build_validator

if TYPE_CHECKING:
    from llmbatch.app.metrics import Metrics
    from llmbatch.modes.batch.mode import BatchMode

__all__ = ["exit_code", "run", "run_async"]

# Objects allocated (less those freed) before a young-generation collection: the
# default is 700, which at thousands of requests a second collects hundreds of times.
GC_YOUNG_THRESHOLD = 20_000


async def run_async(settings: Settings, *, console: Console | None = None) -> tuple[Stats, ExitCode]:
    settings = for_shard(settings)  # --shard K/N: {shard} in the paths becomes K
    shard = parse_shard(settings.shard) if settings.shard is not None else None
    source = source_for(settings, shard)
    lock = OutputLock(settings.output)
    closing = contextlib.AsyncExitStack()  # what _run opened that outlives it (the shared budget)
    stats = Stats()
    metrics = start_metrics(settings, stats)
    code = ExitCode.USAGE  # what an error raised before the end means (the CLI exits 2)
    try:
        source.check()
        if to_stdout(settings):
            check_stdout(settings)
        else:
            check_output(settings, source)
            lock.acquire()
        _, code = await _run(settings, source, console, closing, stats, metrics)
        return stats, code
    finally:
        if metrics is not None:
            await asyncio.get_running_loop().run_in_executor(None, metrics.finish, code)
        await closing.aclose()
        lock.release()
        source.close()


def start_metrics(settings: Settings, stats: Stats) -> Metrics | None:
    """The metrics --metrics-file and --pushgateway ask for, publishing from now on."""
    if settings.metrics_file is None and settings.pushgateway is None:
        return None
    from llmbatch.app.metrics import Metrics

    shard = str(parse_shard(settings.shard).index) if settings.shard is not None else None
    metrics = Metrics(
        stats,
        file=settings.metrics_file,
        gateway=settings.pushgateway,
        job=settings.metrics_job,
        shard=shard,
        every=settings.metrics_every,
        mode="batch" if settings.batch_api else "live",
        warn=lambda message: print(message, file=sys.stderr, flush=True),
    )
    metrics.collector.endpoint = settings.endpoint
    metrics.start()
    return metrics


async def _run(
    settings: Settings,
    source: Source,
    console: Console | None,
    closing: contextlib.AsyncExitStack,
    stats: Stats,
    metrics: Metrics | None,
) -> tuple[Stats, ExitCode]:
    specs = list(settings.validate)
    if settings.schema is not None:
        specs.append(f"schema:{settings.schema}")
    validator = build_validator(specs, require_finish=settings.require_finish)
    first = source.preflight()
    validator.preflight(first.first_item)
    check_api_key(settings)
    deadline = _deadline(settings)  # before anything is sent: a passed one is exit 2
    shared = await join_budget(settings, settings.model or first.model, closing)
    redo = parse_redo(settings.redo)
    if settings.keep_stale and "stale" in redo:
        raise ConfigError("--keep-stale and --redo stale (or all) contradict each other: choose one")
    rules = Rules(
        redo=redo,
        keep_stale=settings.keep_stale,
        revalidate=settings.revalidate,
        max_items=settings.max_items,
    )
    server = server_of(settings)
    output_path = settings.output

    stats.model = settings.model or first.model
    stats.rpm_limit = settings.rpm
    stats.tpm_limit = settings.tpm
    mode = choose_mode(no_live=not settings.live, quiet=settings.quiet)
    display = Display(stats, mode=mode, price=None, progress_every=settings.progress_every, console=console)
    control = RunControl(stats, log=display.log)
    if note := schema_note(settings):
        display.log(note)
    loop = asyncio.get_running_loop()
    # The price is looked up while the run starts (the database takes a third of a
    # second to import); the display shows the cost from when it is known.
    tier = run_tier(settings, first.first_request)
    pricing = loop.run_in_executor(None, run_price, settings, stats.model, tier)

    def priced(f: asyncio.Future[Price | None]) -> None:
        price = None if f.exception() else f.result()
        display.set_price(price)
        if metrics is not None:
            metrics.set_price(price)

    pricing.add_done_callback(priced)
    if metrics is not None:
        metrics.warn = display.error
    if shared is not None:
        shared.log = display.log

    batch_state = open_batches_check(settings)
    if settings.fresh:
        start_fresh(output_path, force=settings.force)
    try:
        index, plan, requests = await plan_work(
            settings, source, rules, server=server, validator=validator, stats=stats
        )
    except StaleAnswers as exc:
        if batch_state is not None and batch_state.open_batches():
            raise ConfigError(f"{exc}; and batches are still open at the provider: {BATCH_WAYS}") from None
        raise
    if plan is not None:
        display.log(rerun_note(plan, index, output_path))
    # The plan holds what the run needs of the output's index: free its tables (~25 bytes
    # an id) now, before the run and the compaction, which builds tables of its own.
    repeated = index.repeated
    del index
    if batch_state is not None:
        requests = not_in_batches(requests, batch_state)

    cap = None
    if settings.max_cost is not None:
        cap = SpendingCap(settings.max_cost, await pricing, tier=tier)
        if first.first_request is not None:
            cap.check(first.first_request)
    provider = make_provider(settings)
    cache = ResponseCache(settings.cache, server=server) if settings.cache is not None else None
    stdout = sys.stdout.buffer if to_stdout(settings) else None
    file = OutputFile(output_path, format=settings.output_format, server=server, stream=stdout)
    output: OutputFile | InOrder = InOrder(file) if stdout is not None and settings.ordered else file
    # With -o - and no --rejects, each bad line is told on stderr: no file is made (or emptied).
    rejects: RejectsFile | StderrRejects = (
        StderrRejects(display.error)
        if stdout is not None and settings.rejects is None
        else RejectsFile(settings.rejects_path)
    )
    limits = Limits(
        rpm=settings.rpm,
        tpm=settings.tpm,
        shared=shared,
        max_pause=settings.max_retry_wait,
        output_tpm=settings.output_tpm,
        split_tokens=settings.provider == "anthropic",
    )
    stats.pacer = limits
    outcomes = Outcomes(
        validator=validator,
        output=output,
        stats=stats,
        control=control,
        cache=cache,
        max_requests=settings.max_requests,
        reask_refusals=settings.reask_refusals,
        retry=settings.retry,
        log=display.log,
        error=display.error,
        flex_fallback=settings.flex_fallback,
        escalate=settings.escalate,
        count_ways=deadline is not None,
    )
    config = EngineConfig(
        concurrency=settings.concurrency,
        timeout=settings.timeout,
        connect_grace=settings.connect_grace,
        max_inflight_bytes=settings.max_inflight_bytes,
    )

    def engine(judge: Outcomes) -> Engine:
        """A live engine writing through `judge` (the run's, or a follow-up's)."""
        return Engine(
            provider=provider,
            limits=limits,
            outcomes=judge,
            config=config,
            rejects=rejects,
            cap=cap,
            log=display.log,
        )

    live = engine(outcomes)
    batches = _batch_mode(settings, provider, batch_state, outcomes, cap, engine, display.log)
    if batches is not None and deadline is not None:
        from llmbatch.modes.batch.golive import LiveLimits

        batches.set_deadline(
            deadline, LiveLimits(settings.rpm, settings.tpm, settings.concurrency, limits.known_limits)
        )

    def on_signal(signame: str) -> None:
        if stats.stop is None:
            control.stop(
                Stop(f"{signame} received; finishing what is in flight (again to abort)", interrupt=True)
            )
        else:
            control.abort()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig.name)
    # Bodies may carry prompt cache keys of their own: those of a key go out close
    # together (a template's requests all carry one key, and need no look-ahead).
    lookahead = settings.prompt is None and settings.prompt_cache_key != "off"
    lookahead = lookahead and not (stdout is not None and settings.ordered)
    tune_gc()
    display.start()
    pending = ExitCode.OK
    try:
        if batches is not None:
            pending = await batches.run(requests, live.reject)
            if pending is ExitCode.OK and stats.stop is None and batch_state is not None:
                batches_done(settings, batch_state)
        else:
            await live.run(grouped(requests) if lookahead else requests)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        stats.finished = time.monotonic()
        if not stats.total_exact and stats.stop is None and pending is ExitCode.OK and plan is None:
            # A shard's share was estimated from the file's size; the whole pass is done
            # now, so the summary tells what it really held.
            stats.total, stats.total_exact = stats.done + stats.rejected + stats.blank, True
        output.close()
        rejects.close()
        if cache is not None:
            cache.close()
        if batch_state is not None:
            batch_state.close()
        live.check_writers()
        await provider.aclose()
        display.stop()
    redone = repeated or (plan is not None and plan.redo and stats.done)
    if stats.stop is None and stdout is None and (redone or settings.ordered):
        # A run that redid items ends with one line per id; --ordered, in input order.
        with phase(stats, "compact"):
            await loop.run_in_executor(None, lambda: compact(output_path, ordered=settings.ordered))
    price = await pricing
    summary_console = console or Console(stderr=True)
    render_summary(stats, price, console=summary_console, rich_table=mode == "live")
    if stats.rejected and isinstance(rejects, RejectsFile):  # else each was told on stderr
        summary_console.print(
            f"rejected lines are listed in {settings.rejects_path}", highlight=False, soft_wrap=True
        )
    if settings.summary_json is not None:
        summary = summary_dict(stats, price)
        settings.summary_json.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    kept_bad = plan.kept_bad if plan is not None and rules.max_items is None else 0
    return stats, exit_code(stats, kept_bad=kept_bad, pending=pending)


def _batch_mode(
    settings: Settings,
    provider: Provider,
    state: BatchState | None,
    outcomes: Outcomes,
    cap: SpendingCap | None,
    engine: Callable[[Outcomes], Engine],
    log: Callable[[str], None],
) -> BatchMode | None:
    """The Batch API mode for --batch-api, its live follow-ups each sent by an engine of
    their own (`engine(judge)` makes one)."""
    if not settings.batch_api or state is None:
        return None
    from llmbatch.modes.batch.mode import BatchConfig, BatchMode

    async def live(judge: Outcomes, jobs: Iterator[Job]) -> None:
        await engine(judge).run(jobs)

    return BatchMode(
        remote=batch_api(settings, provider, state, log),
        state=state,
        outcomes=outcomes,
        config=BatchConfig(
            requests_per_file=settings.batch_limits[0],
            bytes_per_file=settings.batch_limits[1],
            max_tokens=settings.batch_max_tokens,
            poll_every=settings.poll_every,
            no_wait=settings.no_wait,
            cancel=settings.cancel,
            then_live=settings.then == "live",
        ),
        cap=cap,
        live=live,
        log=log,
        label=settings.output.name,
    )


def _deadline(settings: Settings) -> Deadline | None:
    """--deadline, checked: with --batch-api, neither --no-wait nor --cancel, not passed."""
    if settings.deadline is None:
        return None
    if not settings.batch_api:
        raise ConfigError("--deadline mixes the Batch API and live: it needs --batch-api")
    for flag, given in (("--no-wait", settings.no_wait), ("--cancel", settings.cancel)):
        if given:
            raise ConfigError(f"--deadline waits to the end (or goes live): it cannot go with {flag}")
    return Deadline(parse_deadline(settings.deadline), margin=settings.deadline_margin)


def tune_gc() -> None:
    """Set the garbage collector up for a long run: what start-up built (the SDK's and
    pydantic's tens of thousands of objects) will live to the end, so it is frozen out
    of every collection; and the young generation is collected less often (a run makes
    few cycles, and each collection walks all young objects)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def exit_code(stats: Stats, *, kept_bad: int = 0, pending: ExitCode = ExitCode.OK) -> ExitCode:
    """The run's exit code (DESIGN.md): `kept_bad` counts the items in scope whose kept
    line is not valid; `pending` is PENDING when batches are still running."""
    codes = [pending]
    if stats.stop is not None:
        codes.append(stats.stop.exit_code)
    if stats.invalid or stats.failed or stats.rejected or kept_bad:
        codes.append(ExitCode.FAILED)
    return worst(*codes)


def run(settings: Settings, *, console: Console | None = None) -> tuple[Stats, ExitCode]:
    """Run the batch; returns the counters and the exit code."""
    return asyncio.run(run_async(settings, console=console))
