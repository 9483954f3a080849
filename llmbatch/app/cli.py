"""The command line: parse flags, merge the config file, run, exit with the right code.

Each option's parameter name is the `Settings` field it sets; only the options given on
the command line override the config file (click tells given from default), so a
default shown in `--help` is the real one and `--live` beats ``live = false``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from llmbatch.app.format import minutes, usd
from llmbatch.app.settings import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_REQUESTS,
    DEFAULT_CONCURRENCY,
    DEFAULT_CONNECT_GRACE,
    DEFAULT_FAKE_LATENCY_MS,
    DEFAULT_MAX_REQUESTS,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_WAIT,
    DEFAULT_POLL_EVERY,
    DEFAULT_PROGRESS_EVERY,
    DEFAULT_TIMEOUT,
    Settings,
    load_config,
    make_settings,
)
from llmbatch.core.endpoints import CHAT, DEFAULT_ANSWER_TOKENS
from llmbatch.core.errors import ExitCode, LLMBatchError

app = typer.Typer(
    name="llmbatch",
    help="Push JSONL rows through an OpenAI-compatible API: paced, validated, resumable.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

INPUT = "Input"
REQUEST = "Requests"
LIMITS = "Limits and retries"
VALIDATION = "Validation"
OUTPUT = "Output"
RERUN = "Reruns and cache"
BATCH = "Batch API (half price)"
DISPLAY = "Display"
OFFLINE = "Offline model (--provider fake)"
SCALE = "Many processes, one quota"


def Opt(*names: str, help: str, panel: str, show_default: bool = True, metavar: str | None = None) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=show_default, metavar=metavar)


# Options `run` and `estimate` share, declared once.
ProviderOpt = Annotated[
    str, Opt(help="openai (any compatible server) or fake (offline).", panel=REQUEST, metavar="openai|fake")
]
ModelOpt = Annotated[
    str | None,
    Opt("--model", "-m", help="Fill or override each request's model.", panel=REQUEST, metavar="MODEL"),
]
PromptOpt = Annotated[
    str | None,
    Opt(help="Prompt template for data items, with {field} placeholders.", panel=INPUT, metavar="TEXT"),
]
TemplateOpt = Annotated[
    Path | None, Opt(help="Read the prompt template from a file.", panel=INPUT, metavar="FILE")
]
SystemOpt = Annotated[
    str | None, Opt(help="System message for templated requests.", panel=INPUT, metavar="TEXT")
]
IdFieldOpt = Annotated[
    str | None, Opt(help="Data items' id field (else the line number).", panel=INPUT, metavar="TEXT")
]
EndpointOpt = Annotated[
    str, Opt(help="/v1/chat/completions or /v1/embeddings.", panel=REQUEST, metavar="TEXT")
]
ParamOpt = Annotated[
    list[str] | None,
    Opt(
        help="Extra body parameter KEY=JSON, e.g. temperature=0 (a value that is not JSON goes as a string).",
        panel=REQUEST,
        metavar="KEY=JSON",
    ),
]
MaxTokensOpt = Annotated[
    int | None, Opt(help="Shorthand for --param max_tokens=N.", panel=REQUEST, metavar="N")
]
RpmOpt = Annotated[
    float | None, Opt(help="Requests per minute allowed by your provider.", panel=LIMITS, metavar="N")
]
TpmOpt = Annotated[
    float | None, Opt(help="Tokens per minute allowed by your provider.", panel=LIMITS, metavar="N")
]
PriceInOpt = Annotated[
    float | None,
    Opt(help="USD per million prompt tokens (overrides the price database).", panel=DISPLAY, metavar="N"),
]
PriceOutOpt = Annotated[
    float | None, Opt(help="USD per million completion tokens.", panel=DISPLAY, metavar="N")
]
ConfigOpt = Annotated[
    Path | None, Opt(help="Config file (default ./llmbatch.toml if present).", panel=DISPLAY, metavar="FILE")
]
SchemaOpt = Annotated[
    Path | None,
    Opt(
        help="JSON Schema file: ask for it (response_format) and validate answers against it.",
        panel=VALIDATION,
        metavar="FILE",
    ),
]
DEFAULT_ENDPOINT = CHAT


# Options that are not a Settings field of the same name.
_NOT_SETTINGS = frozenset(
    {"config", "template", "param", "max_tokens", "merged", "json_output", "answer_tokens"}
)


def _given(ctx: typer.Context) -> dict[str, Any]:
    """The options given on the command line (or by environment), by name."""
    given = ("COMMANDLINE", "ENVIRONMENT")
    return {k: v for k, v in ctx.params.items() if getattr(ctx.get_parameter_source(k), "name", "") in given}


def _params(values: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--param")
        try:
            out[key] = orjson.loads(value)
        except orjson.JSONDecodeError:
            out[key] = value
    return out


def _read_template(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LLMBatchError(f"cannot read template {path}: {exc.strerror}") from None


def settings_from(ctx: typer.Context, *, input: str, output: str) -> Settings:
    """Settings from the defaults, the config file and the flags given, in that order."""
    given = _given(ctx)
    config, config_path = load_config(ctx.params.get("config"))
    flags = {k: v for k, v in given.items() if k not in _NOT_SETTINGS}
    flags["input"] = Path(input)
    flags["output"] = Path(output)
    if "template" in given:
        flags["prompt"] = _read_template(given["template"])
    params = _params(given.get("param"))
    if "max_tokens" in given:
        params["max_tokens"] = given["max_tokens"]
    if params:
        flags["params"] = params
    if given.get("merged"):
        flags["output_format"] = "merged"
    if "validate" in flags:
        flags["validate"] = tuple(flags["validate"])
    return make_settings(flags=flags, config=config, config_path=config_path)


def _fail(message: str, code: ExitCode = ExitCode.USAGE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(int(code))


def _version(value: bool) -> None:
    if value:
        from llmbatch import __version__

        typer.echo(f"llmbatch {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print llmbatch's version and exit.", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Push JSONL rows through an OpenAI-compatible API: paced, validated, resumable."""


@app.command()
def run(
    ctx: typer.Context,
    input: Annotated[
        str, typer.Argument(help="Input JSONL (- for standard input; gzip and zstd are read as such).")
    ],
    output: Annotated[
        str,
        Opt("--output", "-o", help="Output JSONL (appended; a rerun resumes).", panel=OUTPUT, metavar="FILE"),
    ],
    # input
    prompt: PromptOpt = None,
    template: TemplateOpt = None,
    system: SystemOpt = None,
    id_field: IdFieldOpt = None,
    number_duplicates: Annotated[
        bool,
        Opt(
            "--number-duplicates",
            help="Give duplicate ids a #LINE suffix, not a reject.",
            panel=INPUT,
            metavar="",
        ),
    ] = False,
    # requests
    provider: ProviderOpt = "openai",
    base_url: Annotated[
        str | None, Opt(help="API base URL, e.g. http://localhost:8000/v1.", panel=REQUEST, metavar="URL")
    ] = None,
    api_key_file: Annotated[
        Path | None,
        Opt(help="Read the API key from this file (else OPENAI_API_KEY).", panel=REQUEST, metavar="FILE"),
    ] = None,
    model: ModelOpt = None,
    endpoint: EndpointOpt = DEFAULT_ENDPOINT,
    param: ParamOpt = None,
    max_tokens: MaxTokensOpt = None,
    transport: Annotated[
        str, Opt(help="fast, or sdk: the openai SDK's per-request path.", panel=REQUEST, metavar="fast|sdk")
    ] = "fast",
    # limits
    concurrency: Annotated[
        int, Opt("--concurrency", "-c", help="Requests in flight at most.", panel=LIMITS, metavar="N")
    ] = (DEFAULT_CONCURRENCY),
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    timeout: Annotated[
        float, Opt(help="Seconds to wait for one answer.", panel=LIMITS, metavar="N")
    ] = DEFAULT_TIMEOUT,
    max_retries: Annotated[
        int, Opt(help="Transport retries per item (429, 5xx, timeouts).", panel=LIMITS, metavar="N")
    ] = DEFAULT_MAX_RETRIES,
    max_retry_wait: Annotated[
        float,
        Opt(
            help="Seconds at most to wait when a server asks to wait before a retry (Retry-After).",
            panel=LIMITS,
            metavar="N",
        ),
    ] = DEFAULT_MAX_RETRY_WAIT,
    connect_grace: Annotated[
        float,
        Opt(help="Stop (exit 3) when nothing connects for this many seconds.", panel=LIMITS, metavar="N"),
    ] = DEFAULT_CONNECT_GRACE,
    max_cost: Annotated[
        float | None,
        Opt(
            help="Spend at most this many USD in this run (each request's worst case reserved first).",
            panel=LIMITS,
            metavar="USD",
        ),
    ] = None,
    # validation
    validate: Annotated[
        list[str] | None,
        Opt(
            help="json | schema:FILE | regex:PATTERN | python:MODULE:FN (repeatable).",
            panel=VALIDATION,
            metavar="SPEC",
        ),
    ] = None,
    schema: SchemaOpt = None,
    require_finish: Annotated[
        str | None,
        Opt(help="Answers must end with this finish_reason (stop).", panel=VALIDATION, metavar="TEXT"),
    ] = None,
    max_requests: Annotated[
        int, Opt(help="Answered requests per item, re-asks included.", panel=VALIDATION, metavar="N")
    ] = DEFAULT_MAX_REQUESTS,
    # output
    merged: Annotated[
        bool,
        Opt(
            "--merged",
            help="Write each data item with its answer, not Batch API lines.",
            panel=OUTPUT,
            metavar="",
        ),
    ] = False,
    ordered: Annotated[
        bool,
        Opt(
            "--ordered",
            help="Result lines in input order (else in the order they finish).",
            panel=OUTPUT,
            metavar="",
        ),
    ] = False,
    rejects: Annotated[
        Path | None,
        Opt(help="Where bad input lines go (default OUTPUT.rejects.jsonl).", panel=OUTPUT, metavar="FILE"),
    ] = None,
    summary_json: Annotated[
        Path | None, Opt(help="Also write the final summary as JSON here.", panel=OUTPUT, metavar="FILE")
    ] = None,
    # reruns
    fresh: Annotated[
        bool, Opt("--fresh", help="Start over: empty the output, do not resume.", panel=RERUN, metavar="")
    ] = False,
    force: Annotated[
        bool,
        Opt(
            "--force",
            help="Use OUTPUT even if llmbatch did not write it (append to it; with --fresh, empty it).",
            panel=RERUN,
            metavar="",
        ),
    ] = False,
    redo: Annotated[
        str | None,
        Opt(
            help="Ask again what the output holds as failed, invalid, stale, all (= those three; valid "
            "answers are kept: --fresh starts over), a comma list, or none (keep every line). "
            "Transient failures are redone unless none.",
            panel=RERUN,
            metavar="TEXT",
        ),
    ] = None,
    keep_stale: Annotated[
        bool,
        Opt(
            "--keep-stale",
            help="Keep answers made for a different request (the prompt, model or params changed) "
            "instead of refusing to run.",
            panel=RERUN,
            metavar="",
        ),
    ] = False,
    revalidate: Annotated[
        bool,
        Opt(
            "--revalidate",
            help="Run today's validators over the answers kept; ask again those that fail. A tighter "
            "--schema changes the request: --keep-stale --revalidate keeps the old answers and "
            "re-asks only those that fail it.",
            panel=RERUN,
            metavar="",
        ),
    ] = False,
    max_items: Annotated[
        int | None,
        Opt(help="Only the first N items that still need work (a trial run).", panel=RERUN, metavar="N"),
    ] = None,
    cache: Annotated[
        Path | None,
        Opt(
            help="Response cache, a SQLite file on a local disk: a repeated request costs nothing.",
            panel=RERUN,
            metavar="FILE",
        ),
    ] = None,
    # batch API
    batch_api: Annotated[
        bool,
        Opt(
            "--batch-api",
            help="Send through the provider's Batch API: half price, answers within 24 h.",
            panel=BATCH,
            metavar="",
        ),
    ] = False,
    batch_requests: Annotated[
        int, Opt(help="Requests per batch input file at most.", panel=BATCH, metavar="N")
    ] = (DEFAULT_BATCH_REQUESTS),
    batch_bytes: Annotated[
        int, Opt(help="Bytes per batch input file at most.", panel=BATCH, metavar="N")
    ] = DEFAULT_BATCH_BYTES,
    batch_max_tokens: Annotated[
        int | None,
        Opt(
            help="Enqueued input tokens allowed at once (your tier's batch queue limit).",
            panel=BATCH,
            metavar="N",
        ),
    ] = None,
    poll_every: Annotated[
        float, Opt(help="Seconds between looks at running batches.", panel=BATCH, metavar="N")
    ] = (DEFAULT_POLL_EVERY),
    no_wait: Annotated[
        bool,
        Opt(
            "--no-wait",
            help="Submit, collect what has finished, exit 4 while batches still run.",
            panel=BATCH,
            metavar="",
        ),
    ] = False,
    cancel: Annotated[
        bool,
        Opt(
            "--cancel",
            help="Cancel this output's running batches and collect what they finished.",
            panel=BATCH,
            metavar="",
        ),
    ] = False,
    then: Annotated[
        str,
        Opt(
            help="Where follow-ups go (invalid, retryable, expired): batch, or live at once.",
            panel=BATCH,
            metavar="batch|live",
        ),
    ] = "batch",
    # display
    live: Annotated[
        bool,
        Opt("--live/--no-live", help="Live panel on a terminal, or plain lines.", panel=DISPLAY, metavar=""),
    ] = True,
    quiet: Annotated[
        bool,
        Opt("--quiet/--no-quiet", "-q", help="Only errors and the final summary.", panel=DISPLAY, metavar=""),
    ] = False,
    progress_every: Annotated[
        float, Opt(help="Seconds between plain progress lines.", panel=DISPLAY, metavar="N")
    ] = DEFAULT_PROGRESS_EVERY,
    price_in: PriceInOpt = None,
    price_out: PriceOutOpt = None,
    config: ConfigOpt = None,
    # offline model
    fake_latency_ms: Annotated[
        float, Opt(help="The fake provider's simulated latency.", panel=OFFLINE, metavar="N")
    ] = DEFAULT_FAKE_LATENCY_MS,
    # many processes, one quota (llmbatch.scale.budget, llmbatch.scale.shard)
    redis: Annotated[
        str | None,
        typer.Option(
            "--redis",
            envvar="LLMBATCH_REDIS_URL",
            help="Share the RPM/TPM budget, 429 pauses and lowered paces with every process on the same "
            "key through Redis, e.g. redis://localhost:6379/0 (unreachable at the start: exit 2).",
            rich_help_panel=SCALE,
        ),
    ] = None,
    redis_key: Annotated[
        str | None,
        Opt(
            help="The shared budget's name (default: made from the base URL, the model and a fingerprint "
            "of the API key, never the key).",
            panel=SCALE,
        ),
    ] = None,
    shard: Annotated[
        str | None,
        Opt(
            help="K/N: take only the items whose custom_id hashes to K modulo N (a bad line's reject: its "
            "line number modulo N); -o must contain {shard}, which becomes K in every output path.",
            panel=SCALE,
        ),
    ] = None,
) -> None:
    """Send one request per input line and append one result line per item to OUTPUT."""
    from llmbatch.app.run import run as run_all

    try:
        settings = settings_from(ctx, input=input, output=output)
        _, code = run_all(settings)
    except LLMBatchError as exc:
        raise _fail(str(exc)) from None
    raise typer.Exit(int(code))


@app.command()
def estimate(
    ctx: typer.Context,
    input: Annotated[str, typer.Argument(help="Input JSONL, as for `run`.")],
    provider: ProviderOpt = "openai",
    model: ModelOpt = None,
    prompt: PromptOpt = None,
    template: TemplateOpt = None,
    system: SystemOpt = None,
    id_field: IdFieldOpt = None,
    endpoint: EndpointOpt = DEFAULT_ENDPOINT,
    param: ParamOpt = None,
    max_tokens: MaxTokensOpt = None,
    schema: SchemaOpt = None,
    answer_tokens: Annotated[
        int,
        Opt(help="Expected answer length in tokens when max_tokens is unset.", panel=REQUEST, metavar="N"),
    ] = DEFAULT_ANSWER_TOKENS,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    price_in: PriceInOpt = None,
    price_out: PriceOutOpt = None,
    batch_api: Annotated[
        bool,
        Opt(
            "--batch-api",
            help="Cost it at the Batch API's price (half, or the price database's).",
            panel=BATCH,
            metavar="",
        ),
    ] = False,
    json_output: Annotated[
        bool, Opt("--json", help="Print the estimate as JSON.", panel=DISPLAY, metavar="")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Count requests, tokens, cost and time before spending anything. Sends nothing."""
    from llmbatch.app.estimate import estimate_input

    try:
        settings = settings_from(ctx, input=input, output=input + ".out")
        est, price = estimate_input(settings, answer_tokens=answer_tokens)
    except LLMBatchError as exc:
        raise _fail(str(exc)) from None
    data = est.as_dict(price, rpm=settings.rpm, tpm=settings.tpm)
    if json_output:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    rng = est.cost_range(price)
    at_limits = data["minutes_at_limits"]
    no_price = "unknown (no price for this model: --price-in/--price-out)"
    no_limits = "no --rpm/--tpm given: bound by latency and --concurrency"
    lines = [
        f"lines:            {est.lines:,} ({est.requests:,} requests, {est.rejects:,} would be rejected)",
        f"prompt tokens:    ~{est.prompt_tokens:,} (characters/4, +-25%)",
        f"answer tokens:    ~{est.answer_tokens:,} expected, {est.answer_tokens_max:,} at most",
        "cost:             " + (f"{usd(rng[0])} to {usd(rng[1])}" if rng else no_price),
        "time at limits:   " + (minutes(at_limits) if at_limits is not None else no_limits),
    ]
    lines.extend(f"  {r}" for r in est.first_rejects)
    typer.echo("\n".join(lines))


@app.command()
def report(
    outputs: Annotated[list[Path], typer.Argument(help="Output files of llmbatch runs (.gz and .zst too).")],
    json_output: Annotated[
        bool, Opt("--json", help="Print the report as JSON.", panel=DISPLAY, metavar="")
    ] = False,
    price_in: Annotated[
        float | None, Opt(help="USD per million prompt tokens.", panel=DISPLAY, metavar="N")
    ] = None,
    price_out: Annotated[
        float | None, Opt(help="USD per million completion tokens.", panel=DISPLAY, metavar="N")
    ] = None,
) -> None:
    """What finished outputs hold: counts, failures, tokens, cost, latency. Sends nothing."""
    from llmbatch.app.report import format_report, read_report

    try:
        found = read_report(outputs, price_in=price_in, price_out=price_out)
    except LLMBatchError as exc:
        raise _fail(str(exc)) from None
    if json_output:
        typer.echo(orjson.dumps(found.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        typer.echo(format_report(found))


@app.command()
def merge(
    files: Annotated[
        list[Path],
        typer.Argument(help="Outputs to join (shards of one input), oldest first.", show_default=False),
    ],
    output: Annotated[
        Path, Opt("--output", "-o", help="The merged file (replaced), or - for stdout.", panel=OUTPUT)
    ],
    ordered: Annotated[
        bool,
        Opt("--ordered", help="In input line order (an external sort: memory stays bounded).", panel=OUTPUT),
    ] = False,
) -> None:
    """Join outputs into one file, one line per id: where an id has several lines, the
    newest wins (a later file is newer)."""
    import shutil
    import tempfile

    from llmbatch.app.merge import merge as merge_files

    to_stdout = str(output) == "-"
    try:
        with tempfile.TemporaryDirectory(prefix="llmbatch-merge-") as spool:
            target = Path(spool) / "merged.jsonl" if to_stdout else output
            done = merge_files(files, target, ordered=ordered)
            if to_stdout:  # merged in a file first (the merge replaces its output whole)
                with target.open("rb") as f:
                    shutil.copyfileobj(f, sys.stdout.buffer)
                sys.stdout.buffer.flush()
    except LLMBatchError as exc:
        raise _fail(str(exc)) from None
    except BrokenPipeError:
        raise _fail("standard output was closed by its reader") from None
    except OSError as exc:
        raise _fail(f"cannot merge: {exc.strerror or exc}: {exc.filename}") from None
    notes = []
    if done.dropped:
        notes.append(f"{done.dropped:,} older line{'s' if done.dropped != 1 else ''} of an id dropped")
    if done.torn:
        notes.append(f"{done.torn:,} torn last line{'s' if done.torn != 1 else ''} skipped")
    more = f" ({'; '.join(notes)})" if notes else ""
    files_ = f"{done.files:,} file{'s' if done.files != 1 else ''}"
    into = "standard output" if to_stdout else output
    typer.echo(f"merged {files_} into {into}: {done.lines:,} lines{more}", err=True)


@app.command()
def version() -> None:
    """Print llmbatch's version."""
    from llmbatch import __version__

    typer.echo(__version__)


def main() -> None:
    app(prog_name="llmbatch")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())  # type: ignore[func-returns-value]
