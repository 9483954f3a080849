"""One `llmbatch run`, from settings to exit code: the composition root. It checks what
can be checked before anything is sent, wires the source, the limits, the provider,
the engine, the output and the display together, handles signals, and ends with the
summary and the exit code."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from rich.console import Console

if TYPE_CHECKING:
    from llmbatch.modes.batch.mode import BatchMode
    from llmbatch.scale.budget import SharedBudget

from llmbatch.app.display import Display, choose_mode, render_summary, summary_dict
from llmbatch.app.settings import Settings, read_api_key
from llmbatch.core.errors import ConfigError, ExitCode, InputError, Stop, worst
from llmbatch.core.stats import Stats
from llmbatch.core.values import Finished, Request
from llmbatch.cost.prices import run_price
from llmbatch.cost.spend import SpendingCap
from llmbatch.files.idset import IdSet
from llmbatch.files.jsonl import JsonlWriter, open_lines
from llmbatch.files.locking import OutputLock
from llmbatch.input.build import builder_for
from llmbatch.input.source import Source
from llmbatch.modes.batch.state import BatchState, state_path
from llmbatch.modes.live.engine import Engine, EngineConfig
from llmbatch.output.records import Format, InOrder, OutputFile, is_ours, reject_record, server_hash
from llmbatch.providers.base import Provider
from llmbatch.rerun.cache import ResponseCache
from llmbatch.rerun.plan import OutputIndex, Plan, Rules, compact, make_plan, parse_redo
from llmbatch.scale.shard import for_shard, parse_shard
from llmbatch.schedule.limits import Limits
from llmbatch.validate.validator import Validator, build_validator

__all__ = ["exit_code", "run", "run_async"]

# Objects allocated (less those freed) before a young-generation collection: the
# default is 700, which at thousands of requests a second collects hundreds of times.
GC_YOUNG_THRESHOLD = 20_000
# Where the openai SDK sends requests when neither --base-url nor OPENAI_BASE_URL says.
DEFAULT_BASE_URL = "https://api.openai.com/v1"


def check_output(settings: Settings, source: Source) -> None:
    """Fail before any request for the output problems a user can fix at once."""
    out = settings.output
    if out.is_dir():
        raise ConfigError(f"output is a directory, not a file: {out}")
    if source.same_file(out) or (source.path is not None and source.path.resolve() == out.resolve()):
        raise ConfigError("input and output are the same file: choose another --output")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"output folder does not exist: {folder}")
    for path in (out, settings.rejects_path):
        existed = path.exists()
        try:
            with path.open("ab"):
                pass
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
        if not existed:
            path.unlink()  # a run that stops at a later check must leave no empty files


def check_api_key(settings: Settings) -> str | None:
    """The API key (None for the offline model), or a ConfigError saying how to give one."""
    if settings.provider == "fake":
        return None
    key = read_api_key(settings.api_key_file)
    if key is None:
        raise ConfigError(
            "no API key: set OPENAI_API_KEY or pass --api-key-file "
            "(any value for a local server that needs none; --provider fake runs offline)"
        )
    return key


def make_provider(settings: Settings) -> Provider:
    if settings.provider == "fake":
        from llmbatch.providers.fake import FakeProvider

        return FakeProvider(latency_ms=settings.fake_latency_ms, jitter_ms=settings.fake_latency_ms / 2)
    key = check_api_key(settings)
    assert key is not None
    from llmbatch.providers.openai import OpenAIProvider

    return OpenAIProvider(
        api_key=key,
        base_url=settings.base_url,
        concurrency=settings.concurrency,
        transport=settings.transport,
        timeout=settings.timeout,
    )


class StderrRejects:
    """With `-o -` and no --rejects: each bad line told on stderr, one line each."""

    path = "standard error"
    error = None

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    def write(self, err: InputError) -> None:
        self.log(f"error: rejected line {err.line}: {err}")

    def close(self) -> None:
        return None


class RejectsFile:
    """Bad input lines, one JSON line each. Each run reads the whole input again and
    rejects its bad lines again, so the file is rewritten by every run (a bad line is
    listed once however many reruns it takes), and is only made when there is one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: JsonlWriter | None = None
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    @property
    def error(self) -> OSError | None:
        return self._writer.error if self._writer is not None else None

    def write(self, err: InputError) -> None:
        if self._writer is None:
            self.path.write_bytes(b"")
            self._writer = JsonlWriter(self.path)
        self._writer.write(reject_record(err))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


async def run_async(settings: Settings, *, console: Console | None = None) -> tuple[Stats, ExitCode]:
    settings = for_shard(settings)  # --shard K/N: {shard} in the paths becomes K
    shard = parse_shard(settings.shard) if settings.shard is not None else None
    source = Source(
        settings.input, builder_for(settings), number_duplicates=settings.number_duplicates, shard=shard
    )
    lock = OutputLock(settings.output)
    closing = contextlib.AsyncExitStack()  # what _run opened that outlives it (the shared budget)
    try:
        source.check()
        if to_stdout(settings):
            check_stdout(settings)
        else:
            check_output(settings, source)
            lock.acquire()
        return await _run(settings, source, console, closing)
    finally:
        await closing.aclose()
        lock.release()
        source.close()


def to_stdout(settings: Settings) -> bool:
    return str(settings.output) == "-"


def check_stdout(settings: Settings) -> None:
    """`-o -`: results to standard output, and so no resume: every such run is fresh,
    and what only makes sense on a file the run can read back is refused."""
    for name in ("fresh", "redo", "keep_stale", "revalidate", "batch_api"):
        if getattr(settings, name):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} needs an output file to read back; with -o - every run starts afresh")


def base_url_of(settings: Settings) -> str:
    """Where this run's requests go."""
    if settings.provider == "fake":
        return "fake"
    return settings.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


def server_of(settings: Settings) -> str:
    """The hash of where this run's requests go, as the output lines carry it."""
    return server_hash(base_url_of(settings))


async def join_budget(
    settings: Settings, model: str | None, closing: contextlib.AsyncExitStack
) -> SharedBudget | None:
    """The budget shared through Redis with the other processes on the key (--redis),
    closed with `closing`; None without --redis. Redis unreachable: a ConfigError."""
    if settings.redis is None:
        return None
    from llmbatch.scale.budget import SharedBudget, default_key

    name = settings.redis_key or default_key(base_url_of(settings), model, check_api_key(settings))
    budget = await SharedBudget.connect(settings.redis, name)
    closing.push_async_callback(budget.aclose)
    return budget


def start_fresh(output: Path, *, force: bool) -> None:
    """Empty the output for --fresh: only a file llmbatch wrote, unless --force."""
    if not force and output.exists() and output.stat().st_size:
        try:
            with open_lines(output) as f:
                first = f.readline()
        except (OSError, EOFError, ValueError):  # not even the compression it claims
            first = b""
        if not is_ours(first):
            raise ConfigError(
                f"{output} does not look like an llmbatch output: --fresh would empty it "
                "(add --force if that is what you want)"
            )
    output.write_bytes(b"")
    with contextlib.suppress(FileNotFoundError):
        output.with_name(output.name + ".compacting").unlink()


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def stale_message(n: int, output: Path) -> str:
    answers = "1 answer" if n == 1 else f"{n:,} answers"
    return (
        f"{answers} in {output} were made for a different request (the prompt, model or parameters "
        "changed); nothing was sent. Rerun with --redo stale to ask them again, or --keep-stale to keep them"
    )


def _rerun_note(plan: Plan, index: OutputIndex, output: Path) -> str:
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


async def _run(
    settings: Settings, source: Source, console: Console | None, closing: contextlib.AsyncExitStack
) -> tuple[Stats, ExitCode]:
    specs = list(settings.validate)
    if settings.schema is not None:
        specs.append(f"schema:{settings.schema}")
    validator = build_validator(specs, require_finish=settings.require_finish)
    first = source.preflight()
    validator.preflight(first.first_item)
    check_api_key(settings)
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

    stats = Stats()
    stats.model = settings.model or first.model
    stats.rpm_limit = settings.rpm
    stats.tpm_limit = settings.tpm
    mode = choose_mode(no_live=not settings.live, quiet=settings.quiet)
    display = Display(stats, mode=mode, price=None, progress_every=settings.progress_every, console=console)
    loop = asyncio.get_running_loop()
    # The price is looked up while the run starts (the database takes a third of a
    # second to import); the display shows the cost from when it is known.
    pricing = loop.run_in_executor(None, run_price, settings, stats.model)
    pricing.add_done_callback(lambda f: display.set_price(None if f.exception() else f.result()))
    if shared is not None:
        shared.log = display.log

    batch_state = open_batches_check(settings)
    if settings.fresh:
        start_fresh(output_path, force=settings.force)
    work = _work(settings, source, rules, server=server, validator=validator, stats=stats)
    try:
        index, plan, requests = await work
    except ConfigError as exc:
        if batch_state is not None and batch_state.open_batches() and "different request" in str(exc):
            raise ConfigError(f"{exc}; and batches are still open at the provider: {_BATCH_WAYS}") from None
        raise
    if plan is not None:
        display.log(_rerun_note(plan, index, output_path))
    # The plan holds what the run needs of the output's index: free its tables (~25 bytes
    # an id) now, before the run and the compaction, which builds tables of its own.
    repeated = index.repeated
    del index
    if batch_state is not None:
        requests = _not_in_batches(requests, batch_state)

    cap = None
    if settings.max_cost is not None:
        cap = SpendingCap(settings.max_cost, await pricing)
        if first.first_request is not None:
            cap.check(first.first_request)
    provider = make_provider(settings)
    cache = ResponseCache(settings.cache, server=server) if settings.cache is not None else None
    stdout = sys.stdout.buffer if to_stdout(settings) else None
    file = OutputFile(output_path, format=settings.output_format, server=server, stream=stdout)
    output: OutputFile | InOrder = InOrder(file) if stdout is not None and settings.ordered else file
    # With -o - and no --rejects, each bad line is told on stderr: no file is made (or emptied).
    rejects: RejectsFile | StderrRejects = (
        StderrRejects(display.log)
        if stdout is not None and settings.rejects is None
        else RejectsFile(settings.rejects_path)
    )
    limits = Limits(rpm=settings.rpm, tpm=settings.tpm, shared=shared)
    stats.pacer = limits
    engine = Engine(
        provider=provider,
        limits=limits,
        validator=validator,
        output=output,
        rejects=rejects,
        stats=stats,
        cache=cache,
        cap=cap,
        config=EngineConfig(
            concurrency=settings.concurrency,
            max_requests=settings.max_requests,
            max_retries=settings.max_retries,
            timeout=settings.timeout,
            connect_grace=settings.connect_grace,
        ),
        log=display.log,
    )
    batches = _batch_mode(settings, provider, engine, batch_state, validator, file, stats, cache, display.log)
    stopper: Engine | BatchMode = batches or engine

    def on_signal(signame: str) -> None:
        if stats.stop is None:
            stopper.stop(
                Stop(f"{signame} received; finishing what is in flight (again to abort)", interrupt=True)
            )
        else:
            engine.abort()
            stopper.stop(Stop("aborted"))

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig.name)
    tune_gc()
    display.start()
    pending = ExitCode.OK
    try:
        if batches is not None:
            pending = await batches.run(requests, engine.reject)
        else:
            await engine.run(requests)
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
        engine.check_writers()
        await provider.aclose()
        display.stop()
    redone = repeated or (plan is not None and plan.redo and stats.done)
    if stats.stop is None and stdout is None and (redone or settings.ordered):
        # A run that redid items ends with one line per id; --ordered, in input order.
        with _phase(stats, "compact"):
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


_BATCH_WAYS = "rerun with --batch-api to collect them, or --batch-api --cancel to cancel them"


def open_batches_check(settings: Settings) -> BatchState | None:
    """The Batch API mode's record of this output, if it has one. Open batches bind the
    output: only a --batch-api run (which collects them first) may go on."""
    for name in ("no_wait", "cancel"):
        if getattr(settings, name) and not settings.batch_api:
            raise ConfigError(f"--{name.replace('_', '-')} goes with --batch-api")
    if settings.then == "live" and not settings.batch_api:
        raise ConfigError("--then live goes with --batch-api")
    if settings.batch_api and settings.provider == "fake":
        raise ConfigError(
            "--batch-api needs a server with the OpenAI Batch API; the offline fake model has none "
            "(python -m llmbatch.testing.server has one, for trying it out)"
        )
    existing = BatchState.existing(settings.output)
    open_ = existing.open_batches() if existing is not None else []
    if open_ and (not settings.batch_api or settings.fresh):
        existing_n = f"{len(open_)} batch{'es' if len(open_) != 1 else ''}"
        if existing is not None:
            existing.close()
        how = "--fresh would lose them" if settings.fresh else "a live run would pay for them twice"
        raise ConfigError(
            f"{settings.output} has {existing_n} still open at the provider ({how}): {_BATCH_WAYS}"
        )
    if settings.fresh and existing is not None:  # starting over: the record of what was done too
        existing.close()
        existing = None
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(str(state_path(settings.output)) + suffix).unlink()
    if settings.batch_api:
        return existing or BatchState(state_path(settings.output))
    if existing is not None:
        existing.close()
    return None


def _not_in_batches(
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


def _batch_mode(
    settings: Settings,
    provider: Provider,
    engine: Engine,
    state: BatchState | None,
    validator: Validator,
    output: OutputFile,
    stats: Stats,
    cache: ResponseCache | None,
    log: Callable[[str], None],
) -> BatchMode | None:
    if not settings.batch_api or state is None:
        return None
    from llmbatch.modes.batch.mode import BatchConfig, BatchMode
    from llmbatch.providers.openai import OpenAIProvider
    from llmbatch.providers.openai_batches import RemoteBatches

    assert isinstance(provider, OpenAIProvider)

    async def live(requests: Iterator[Request]) -> list[str]:
        recorder = _Recording(output)
        engine.output = recorder
        try:
            await engine.run(requests)
        finally:
            engine.output = output
        output.sync()
        return recorder.ids

    return BatchMode(
        remote=RemoteBatches(provider.client, log=log),
        state=state,
        output=output,
        validator=validator,
        stats=stats,
        config=BatchConfig(
            requests_per_file=settings.batch_requests,
            bytes_per_file=settings.batch_bytes,
            max_tokens=settings.batch_max_tokens,
            poll_every=settings.poll_every,
            no_wait=settings.no_wait,
            cancel=settings.cancel,
            then_live=settings.then == "live",
            max_requests=settings.max_requests,
            max_retries=settings.max_retries,
        ),
        cache=cache,
        cap=engine.cap,
        live=live,
        log=log,
        label=settings.output.name,
    )


class _Recording:
    """An output that also remembers the ids it was given (for the batch record)."""

    def __init__(self, output: OutputFile) -> None:
        self._output = output
        self.path = output.path
        self.ids: list[str] = []

    @property
    def error(self) -> OSError | None:
        return self._output.error

    backlog = 0

    def write(self, finished: Finished) -> None:
        self._output.write(finished)
        self.ids.append(finished.request.custom_id)

    def discard(self, order: int) -> None:
        return None


async def _work(
    settings: Settings, source: Source, rules: Rules, *, server: str, validator: Validator, stats: Stats
) -> tuple[OutputIndex, Plan | None, Iterator[Request | InputError]]:
    """What this run sends: everything (a first run), or what the rerun rules say, judged
    in a pre-pass over the whole input before anything is sent."""
    loop = asyncio.get_running_loop()
    output = settings.output
    with _phase(stats, "read_output"):
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

    with _phase(stats, "pre_pass"):
        plan = await loop.run_in_executor(None, pre_pass)
    if plan.stale:
        raise ConfigError(stale_message(plan.stale, output))
    stats.skipped = plan.skipped
    stats.redone = plan.redo
    stats.kept = plan.kept
    stats.total = plan.items + plan.rejects + stats.blank
    if rules.max_items is not None:
        stats.counts_skipped = False
        stats.total = plan.work
    until = plan.last_line if rules.max_items is not None else None
    return index, plan, source.planned(plan.todo, plan.bad, plan.dupes, plan.renamed, until=until)


def tune_gc() -> None:
    """Set the garbage collector up for a long run: what start-up built (the SDK's and
    pydantic's tens of thousands of objects) will live to the end, so it is frozen out
    of every collection; and the young generation is collected less often (a run makes
    few cycles, and each collection walks all young objects)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


@contextlib.contextmanager
def _phase(stats: Stats, name: str) -> Iterator[None]:
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
