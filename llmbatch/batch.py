"""One run of `llmbatch run`, from settings to exit code: preflight checks, resume,
the engine, the display, signals and the summary."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
from rich.console import Console

from llmbatch.display import Display, choose_mode, render_summary, summary_dict
from llmbatch.engine import Engine, EngineConfig
from llmbatch.errors import ConfigError, InputError
from llmbatch.jsonl import JsonlWriter, count_lines, parse_line, read_lines
from llmbatch.limits import Limits
from llmbatch.prices import Price, price_for
from llmbatch.providers.base import Provider, Request
from llmbatch.requests import RequestBuilder, Template, normalise_endpoint
from llmbatch.resume import IdSet, done_ids
from llmbatch.settings import Settings, read_api_key
from llmbatch.stats import Stats
from llmbatch.validate import build_validator

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_STOPPED", "EXIT_USAGE", "run", "run_async"]

EXIT_OK = 0  # every item valid
EXIT_FAILED = 1  # some items failed, were invalid, or lines were rejected
EXIT_USAGE = 2  # usage, input or configuration error: nothing was sent
EXIT_STOPPED = 3  # stopped early (auth, quota, interrupt): a rerun resumes


def check_paths(settings: Settings) -> None:
    """Fail before any request for the file problems a user can fix at once."""
    src, out = settings.input, settings.output
    if not src.exists():
        raise ConfigError(f"input file not found: {src}")
    if src.is_dir():
        raise ConfigError(f"input is a directory, not a file: {src}")
    try:
        with src.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot read input file {src}: {exc.strerror}") from None
    if out.is_dir():
        raise ConfigError(f"output is a directory, not a file: {out}")
    if src.resolve() == out.resolve() or (out.exists() and out.samefile(src)):
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


def schema_format(path: Path) -> dict[str, object]:
    """A structured-outputs response_format asking for the schema in `path`."""
    try:
        schema = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read schema {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"schema {path} is not JSON: {exc}") from None
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in path.stem.split(".")[0])[:64] or "answer"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def make_builder(settings: Settings) -> RequestBuilder:
    endpoint = normalise_endpoint(settings.endpoint)
    if endpoint is None:
        raise ConfigError(f"unknown endpoint {settings.endpoint!r}")
    params = dict(settings.params)
    if settings.schema is not None:
        params.setdefault("response_format", schema_format(settings.schema))
    return RequestBuilder(
        model=settings.model,
        template=Template(settings.prompt) if settings.prompt is not None else None,
        system=settings.system,
        id_field=settings.id_field,
        endpoint=endpoint,
        params=params,
        default_model="fake" if settings.provider == "fake" else None,
    )


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
    )


def first_item(path: Path) -> dict[str, object] | None:
    """The first good line, for validators' preflight."""
    for number, raw in read_lines(path):
        try:
            return parse_line(number, raw)
        except InputError:
            continue
    return None


def requests_from(
    path: Path, builder: RequestBuilder, done: IdSet, stats: Stats, *, number_duplicates: bool
) -> Iterator[Request | InputError]:
    """Input lines as requests or rejects; items already done are skipped here.

    Duplicate ids are found with 32-bit fingerprints (half the memory of full hashes,
    which matters at millions of lines). A fingerprint seen before only makes a line a
    suspect: suspects wait until the end of the input, when one more pass over the
    file tells true duplicates from the few dozen chance matches.
    """
    seen = IdSet(stats.total or 0, bits=32)
    suspects: list[Request] = []

    def fresh(req: Request) -> Request | None:
        if done and req.custom_id in done:
            stats.skipped += 1
            return None
        return req

    for number, raw in read_lines(path):
        try:
            req = builder.build(number, parse_line(number, raw))
        except InputError as err:
            yield err
            continue
        if not seen.add(req.custom_id):
            suspects.append(req)
            continue
        if (ok := fresh(req)) is not None:
            yield ok
    if not suspects:
        return
    first = first_lines(path, builder, {r.custom_id for r in suspects})
    dupes = [r for r in suspects if first.get(r.custom_id, r.line) < r.line]
    names = numbered_ids(path, builder, dupes) if number_duplicates and dupes else {}
    for req in suspects:
        if first.get(req.custom_id, req.line) < req.line:
            if not number_duplicates:
                yield InputError(
                    f"duplicate custom_id {req.custom_id!r} (line {first[req.custom_id]} has it)",
                    line=req.line,
                )
                continue
            req = Request(names[req.line], req.body, req.url, req.line, req.metadata, req.item)
        if (ok := fresh(req)) is not None:
            yield ok


def numbered_ids(path: Path, builder: RequestBuilder, dupes: list[Request]) -> dict[int, str]:
    """`ID#LINE` for each duplicate (by line), made longer while another input line, or
    another duplicate, already has that name: the output's ids stay unique, and the same
    input gets the same names on every rerun, so a resume recognises them."""
    names = {r.line: f"{r.custom_id}#{r.line}" for r in dupes}
    while True:
        taken = first_lines(path, builder, set(names.values()))
        counts = Counter(names.values())
        clash = [line for line, name in names.items() if name in taken or counts[name] > 1]
        if not clash:
            return names
        for line in clash:
            names[line] += f"#{line}"


def first_lines(path: Path, builder: RequestBuilder, ids: set[str]) -> dict[str, int]:
    """The first line that has each of `ids`, by building every request again."""
    first: dict[str, int] = {}
    for number, raw in read_lines(path):
        try:
            cid = builder.build(number, parse_line(number, raw)).custom_id
        except InputError:
            continue
        if cid in ids and cid not in first:
            first[cid] = number
            if len(first) == len(ids):
                break
    return first


def first_model(path: Path, builder: RequestBuilder) -> str | None:
    """The model of the first good request: what the price table is looked up by."""
    for number, raw in read_lines(path):
        try:
            model = builder.build(number, parse_line(number, raw)).body.get("model")
        except InputError:
            continue
        return model if isinstance(model, str) else None
    return None


def price_of(settings: Settings, model: str | None = None) -> Price | None:
    overrides = {m: Price(i, o) for m, (i, o) in settings.prices.items()}
    model = settings.model or model or ("fake" if settings.provider == "fake" else None)
    if settings.provider == "fake" and settings.price_in is None and settings.price_out is None:
        return price_for(model, overrides) or Price(0.0, 0.0)
    return price_for(model, overrides, price_in=settings.price_in, price_out=settings.price_out)


async def run_async(settings: Settings, *, console: Console | None = None) -> tuple[Stats, int]:
    check_paths(settings)
    builder = make_builder(settings)
    specs = list(settings.validate)
    if settings.schema is not None:
        specs.append(f"schema:{settings.schema}")
    validator = build_validator(specs, require_finish=settings.require_finish)
    validator.preflight(first_item(settings.input))
    provider = make_provider(settings)

    stats = Stats()
    stats.model = settings.model or first_model(settings.input, builder)
    stats.rpm_limit = settings.rpm
    stats.tpm_limit = settings.tpm
    mode = choose_mode(no_live=not settings.live, quiet=settings.quiet)
    price = price_of(settings, stats.model)
    display = Display(stats, mode=mode, price=price, progress_every=settings.progress_every, console=console)

    if settings.fresh:
        settings.output.write_bytes(b"")
        done = IdSet()
    else:
        done = done_ids(settings.output)
    if len(done):
        display.log(f"resuming: {len(done):,} items already in {settings.output}")
    loop = asyncio.get_running_loop()
    # Counted up front (about a second per GB): the total for the progress bar, and
    # the size of the duplicate-id table, allocated once instead of grown.
    stats.total = await loop.run_in_executor(None, count_lines, settings.input)

    writer = JsonlWriter(settings.output)
    # Each run reads the whole input again and rejects its bad lines again: the rejects
    # file is rewritten, not appended to, so a bad line is listed once however many
    # reruns it takes.
    settings.rejects_path.write_bytes(b"")
    rejects = JsonlWriter(settings.rejects_path)
    rejects_start = rejects.path.stat().st_size
    engine = Engine(
        provider=provider,
        limits=Limits(rpm=settings.rpm, tpm=settings.tpm),
        validator=validator,
        writer=writer,
        rejects=rejects,
        stats=stats,
        config=EngineConfig(
            concurrency=settings.concurrency,
            max_requests=settings.max_requests,
            max_retries=settings.max_retries,
            timeout=settings.timeout,
            output_format=settings.output_format,
        ),
        log=display.log,
    )
    interrupts = 0

    def on_signal(signame: str) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            engine.stop(f"{signame} received; finishing requests in flight (again to abort)")
        else:
            engine.abort()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig.name)
    display.start()
    try:
        await engine.run(
            requests_from(settings.input, builder, done, stats, number_duplicates=settings.number_duplicates)
        )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        stats.finished = time.monotonic()
        writer.close()
        rejects.close()
        engine.check_writers()
        await provider.aclose()
        display.stop()
    if stats.rejected == 0 and rejects_start == 0:
        with contextlib.suppress(OSError):
            rejects.path.unlink()
    summary_console = console or Console(stderr=True)
    render_summary(stats, price, console=summary_console, rich_table=mode == "live")
    if settings.rejects_path.exists() and stats.rejected:
        summary_console.print(
            f"rejected lines are listed in {settings.rejects_path}", highlight=False, soft_wrap=True
        )
    if settings.summary_json is not None:
        summary = summary_dict(stats, price)
        settings.summary_json.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return stats, exit_code(stats, engine)


def exit_code(stats: Stats, engine: Engine) -> int:
    if engine.fatal is not None:
        return engine.fatal.exit_code
    if stats.stopped:
        return EXIT_STOPPED
    if stats.invalid or stats.failed or stats.rejected:
        return EXIT_FAILED
    return EXIT_OK


def run(settings: Settings, *, console: Console | None = None) -> tuple[Stats, int]:
    """Run the batch; returns the counters and the exit code."""
    return asyncio.run(run_async(settings, console=console))
