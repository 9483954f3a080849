"""One `llmbatch run`, from settings to exit code: the composition root. It checks what
can be checked before anything is sent, wires the source, the limits, the provider,
the engine, the output and the display together, handles signals, and ends with the
summary and the exit code."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import orjson
from rich.console import Console

from llmbatch.display import Display, choose_mode, render_summary, summary_dict
from llmbatch.engine import Engine, EngineConfig
from llmbatch.errors import ConfigError, ExitCode, InputError, Stop
from llmbatch.idset import IdSet
from llmbatch.jsonl import JsonlWriter
from llmbatch.limits import Limits
from llmbatch.output import OutputFile, done_ids, reject_record
from llmbatch.prices import run_price
from llmbatch.providers.base import Provider, Request
from llmbatch.requests import builder_for
from llmbatch.settings import Settings, read_api_key
from llmbatch.source import Source
from llmbatch.stats import Stats
from llmbatch.validate import build_validator

__all__ = ["exit_code", "run", "run_async"]


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


def make_provider(settings: Settings) -> Provider:
    if settings.provider == "fake":
        from llmbatch.providers.fake import FakeProvider

        return FakeProvider(latency_ms=settings.fake_latency_ms, jitter_ms=settings.fake_latency_ms / 2)
    key = read_api_key(settings.api_key_file)
    if key is None:
        raise ConfigError(
            "no API key: set OPENAI_API_KEY or pass --api-key-file "
            "(any value for a local server that needs none; --provider fake runs offline)"
        )
    from llmbatch.providers.openai import OpenAIProvider

    return OpenAIProvider(
        api_key=key,
        base_url=settings.base_url,
        concurrency=settings.concurrency,
        transport=settings.transport,
        timeout=settings.timeout,
    )


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
    source = Source(settings.input, builder_for(settings), number_duplicates=settings.number_duplicates)
    try:
        return await _run(settings, source, console)
    finally:
        source.close()


async def _run(settings: Settings, source: Source, console: Console | None) -> tuple[Stats, ExitCode]:
    source.check()
    check_output(settings, source)
    specs = list(settings.validate)
    if settings.schema is not None:
        specs.append(f"schema:{settings.schema}")
    validator = build_validator(specs, require_finish=settings.require_finish)
    first = source.preflight()
    validator.preflight(first.first_item)
    provider = make_provider(settings)

    stats = Stats()
    stats.model = settings.model or first.model
    stats.rpm_limit = settings.rpm
    stats.tpm_limit = settings.tpm
    mode = choose_mode(no_live=not settings.live, quiet=settings.quiet)
    price = run_price(settings, stats.model)
    display = Display(stats, mode=mode, price=price, progress_every=settings.progress_every, console=console)

    if settings.fresh:
        settings.output.write_bytes(b"")
        done = IdSet()
    else:
        done = done_ids(settings.output)
    if len(done):
        display.log(f"resuming: {len(done):,} items already in {settings.output}")
    loop = asyncio.get_running_loop()
    # Counted up front when cheap (about a second per GB): the total for the progress
    # bar, and the size of the duplicate-id table, allocated once instead of grown.
    stats.total = await loop.run_in_executor(None, source.count)

    output = OutputFile(settings.output, format=settings.output_format)
    rejects = RejectsFile(settings.rejects_path)
    engine = Engine(
        provider=provider,
        limits=Limits(rpm=settings.rpm, tpm=settings.tpm),
        validator=validator,
        output=output,
        rejects=rejects,
        stats=stats,
        config=EngineConfig(
            concurrency=settings.concurrency,
            max_requests=settings.max_requests,
            max_retries=settings.max_retries,
            timeout=settings.timeout,
        ),
        log=display.log,
    )

    def on_signal(signame: str) -> None:
        if stats.stop is None:
            engine.stop(
                Stop(f"{signame} received; finishing requests in flight (again to abort)", interrupt=True)
            )
        else:
            engine.abort()

    def not_done(req: Request) -> bool:
        if req.custom_id in done:
            stats.skipped += 1
            return False
        return True

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig.name)
    display.start()
    try:
        await engine.run(
            source.requests(expected=stats.total or 0, wanted=not_done if done else None, stats=stats)
        )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        stats.finished = time.monotonic()
        output.close()
        rejects.close()
        engine.check_writers()
        await provider.aclose()
        display.stop()
    summary_console = console or Console(stderr=True)
    render_summary(stats, price, console=summary_console, rich_table=mode == "live")
    if stats.rejected:
        summary_console.print(
            f"rejected lines are listed in {settings.rejects_path}", highlight=False, soft_wrap=True
        )
    if settings.summary_json is not None:
        summary = summary_dict(stats, price)
        settings.summary_json.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return stats, exit_code(stats)


def exit_code(stats: Stats) -> ExitCode:
    if stats.stop is not None:
        return stats.stop.exit_code
    if stats.invalid or stats.failed or stats.rejected:
        return ExitCode.FAILED
    return ExitCode.OK


def run(settings: Settings, *, console: Console | None = None) -> tuple[Stats, ExitCode]:
    """Run the batch; returns the counters and the exit code."""
    return asyncio.run(run_async(settings, console=console))
