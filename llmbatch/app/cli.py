"""The command line: `run` (parse its flags, merge the config file, run, exit with the
right code) and the commands that send nothing (llmbatch.app.tools). The options shared
by commands, and how flags become `Settings`, are in llmbatch.app.options."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from llmbatch.app.options import (
    BATCH,
    DEFAULT_ENDPOINT,
    DISPLAY,
    INPUT,
    LIMITS,
    METRICS,
    OFFLINE,
    OUTPUT,
    REQUEST,
    RERUN,
    SCALE,
    VALIDATION,
    AttachOpt,
    ConfigOpt,
    CsvDelimiterOpt,
    CsvEncodingOpt,
    EndpointOpt,
    IdFieldOpt,
    InputFormatOpt,
    MaxTokensOpt,
    ModelOpt,
    Opt,
    OutputTpmOpt,
    ParamOpt,
    PriceInOpt,
    PriceOutOpt,
    PromptOpt,
    ProviderOpt,
    RpmOpt,
    SchemaOpt,
    SystemOpt,
    TemplateOpt,
    TpmOpt,
    fail,
    settings_from,
)
from llmbatch.app.settings import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_REQUESTS,
    DEFAULT_CONCURRENCY,
    DEFAULT_CONNECT_GRACE,
    DEFAULT_FAKE_LATENCY_MS,
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_REQUESTS,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_WAIT,
    DEFAULT_METRICS_EVERY,
    DEFAULT_METRICS_JOB,
    DEFAULT_POLL_EVERY,
    DEFAULT_PROGRESS_EVERY,
    DEFAULT_TIMEOUT,
    FLEX_TIMEOUT,
)
from llmbatch.app.tools import estimate, export, merge, report
from llmbatch.core.cachekey import DEFAULT_CACHE_KEY_MODE
from llmbatch.core.errors import LLMBatchError
from llmbatch.input.tables import DEFAULT_CSV_ENCODING
from llmbatch.modes.deadline import DEFAULT_DEADLINE_MARGIN
from llmbatch.providers.anthropic_batches import DEFAULT_MESSAGE_BATCH_BYTES, DEFAULT_MESSAGE_BATCH_REQUESTS

app = typer.Typer(
    name="llmbatch",
    help="Push JSONL rows through an OpenAI-compatible API: paced, validated, resumable.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
        str,
        typer.Argument(
            help="Input: JSONL, CSV, TSV or Parquet (- for standard input; gzip and zstd are read as such)."
        ),
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
    attach: AttachOpt = None,
    max_inflight_bytes: Annotated[
        int,
        Opt(
            help="Bytes of attachments (--attach, as base64) the requests on their way may hold at once.",
            panel=INPUT,
            metavar="N",
        ),
    ] = DEFAULT_MAX_INFLIGHT_BYTES,
    input_format: InputFormatOpt = "auto",
    csv_delimiter: CsvDelimiterOpt = None,
    csv_encoding: CsvEncodingOpt = DEFAULT_CSV_ENCODING,
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
        str | None,
        Opt(
            help="API base URL, e.g. http://localhost:8000/v1 (else OPENAI_BASE_URL, or for anthropic "
            "ANTHROPIC_BASE_URL, else the provider's own).",
            panel=REQUEST,
            metavar="URL",
        ),
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
    service_tier: Annotated[
        str | None,
        Opt(
            help="service_tier for bodies that name none: flex (Batch API prices, slower, a live tier; "
            "timeout 900 s), priority, default or auto. Priced by tier.",
            panel=REQUEST,
            metavar="flex|priority|default|auto",
        ),
    ] = None,
    flex_fallback: Annotated[
        int | None,
        Opt(
            help="Ask a flex item on the default tier after N capacity 429s (resource unavailable).",
            panel=REQUEST,
            metavar="N",
        ),
    ] = None,
    # limits
    concurrency: Annotated[
        int, Opt("--concurrency", "-c", help="Requests in flight at most.", panel=LIMITS, metavar="N")
    ] = (DEFAULT_CONCURRENCY),
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    output_tpm: OutputTpmOpt = None,
    timeout: Annotated[
        float,
        Opt(
            help=f"Seconds to wait for one answer ({FLEX_TIMEOUT:g} with --service-tier flex).",
            panel=LIMITS,
            metavar="N",
        ),
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
    strict: Annotated[
        bool,
        Opt(
            "--strict",
            help="--schema must be sent with strict: true: exit 2 naming why not (else it goes "
            "non-strict with a note).",
            panel=VALIDATION,
            metavar="",
        ),
    ] = False,
    require_finish: Annotated[
        str | None,
        Opt(help="Answers must end with this finish_reason (stop).", panel=VALIDATION, metavar="TEXT"),
    ] = None,
    max_requests: Annotated[
        int, Opt(help="Answered requests per item, re-asks included.", panel=VALIDATION, metavar="N")
    ] = DEFAULT_MAX_REQUESTS,
    reask_refusals: Annotated[
        bool,
        Opt(
            "--reask-refusals",
            help="Ask again when the model refuses (else written invalid, cause refused, not asked again).",
            panel=VALIDATION,
            metavar="",
        ),
    ] = False,
    escalate: Annotated[
        list[str] | None,
        Opt(
            help="Ask an item still invalid after its --max-requests again on MODEL, with a fresh count "
            "(repeatable: the next one after that); the output says which model answered.",
            panel=VALIDATION,
            metavar="MODEL",
        ),
    ] = None,
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
    prompt_cache_key: Annotated[
        str,
        Opt(
            help="The prompt_cache_key templated requests carry (from the template's fixed prefix and "
            "--system, so the provider's prompt cache serves them): openai sends it to OpenAI's API "
            "only, auto (or on) to any server, off never. A body's own key is kept. With --provider "
            "anthropic: cache_control breakpoints on --system and the fixed prefix, by default to "
            "Anthropic's own API only (auto/on: any server; off: none); a body's own are kept.",
            panel=RERUN,
            metavar="openai|auto|on|off",
        ),
    ] = DEFAULT_CACHE_KEY_MODE,
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
        int | None,
        Opt(
            help=f"Requests per batch at most (default: OpenAI {DEFAULT_BATCH_REQUESTS:,}, "
            f"Anthropic {DEFAULT_MESSAGE_BATCH_REQUESTS:,}).",
            panel=BATCH,
            metavar="N",
        ),
    ] = None,
    batch_bytes: Annotated[
        int | None,
        Opt(
            help=f"Bytes per batch at most (default: OpenAI {DEFAULT_BATCH_BYTES / 1e6:.0f} MB, "
            f"Anthropic {DEFAULT_MESSAGE_BATCH_BYTES / 1e6:.0f} MB).",
            panel=BATCH,
            metavar="N",
        ),
    ] = None,
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
    deadline: Annotated[
        str | None,
        Opt(
            help="Done by TIME (ISO, e.g. 2026-12-04T07:00 or 07:00, or a duration such as 6h): the "
            "rest goes live, the running batches cancelled, when the live time to finish it (at "
            "--rpm/--tpm, else measured on 3 live requests) would pass it.",
            panel=BATCH,
            metavar="TIME",
        ),
    ] = None,
    deadline_margin: Annotated[
        float,
        Opt(help="Safety margin on the live time to finish, for --deadline.", panel=BATCH, metavar="SHARE"),
    ] = DEFAULT_DEADLINE_MARGIN,
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
    # metrics for Prometheus (llmbatch.app.metrics)
    metrics_file: Annotated[
        Path | None,
        Opt(
            help="Write the run's metrics in Prometheus' text format here, renewed atomically every "
            "--metrics-every seconds and at the end (node_exporter's textfile collector reads *.prom).",
            panel=METRICS,
            metavar="FILE",
        ),
    ] = None,
    pushgateway: Annotated[
        str | None,
        Opt(
            help="Push the run's metrics to this Prometheus Pushgateway (e.g. http://pushgateway:9091) "
            "every --metrics-every seconds and at the end, grouped by job and shard.",
            panel=METRICS,
            metavar="URL",
        ),
    ] = None,
    metrics_job: Annotated[
        str, Opt(help="The Pushgateway job the metrics are pushed under.", panel=METRICS, metavar="NAME")
    ] = DEFAULT_METRICS_JOB,
    metrics_every: Annotated[
        float, Opt(help="Seconds between metrics rewrites and pushes.", panel=METRICS, metavar="N")
    ] = DEFAULT_METRICS_EVERY,
) -> None:
    """Send one request per input line and append one result line per item to OUTPUT."""
    from llmbatch.app.run import run as run_all

    try:
        settings = settings_from(ctx, input=input, output=output)
        _, code = run_all(settings)
    except LLMBatchError as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(int(code))


app.command()(estimate)
app.command()(report)
app.command()(merge)
app.command()(export)


@app.command()
def version() -> None:
    """Print llmbatch's version."""
    from llmbatch import __version__

    typer.echo(__version__)


def main() -> None:
    app(prog_name="llmbatch")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())  # type: ignore[func-returns-value]
