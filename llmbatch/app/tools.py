"""The commands that send nothing: `estimate` (before a run), `report` (after it),
`merge` (shards into one file) and `export` (outputs as a table). The CLI registers
them (llmbatch.app.cli)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from llmbatch.app.format import minutes, usd
from llmbatch.app.options import (
    BATCH,
    DEFAULT_ENDPOINT,
    DISPLAY,
    INPUT,
    OUTPUT,
    REQUEST,
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
    OrderedOpt,
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
from llmbatch.core.endpoints import DEFAULT_ANSWER_TOKENS
from llmbatch.core.errors import LLMBatchError
from llmbatch.input.tables import DEFAULT_CSV_ENCODING

if TYPE_CHECKING:
    from llmbatch.app.report import Report

__all__ = ["estimate", "export", "merge", "report"]


def estimate(
    ctx: typer.Context,
    input: Annotated[str, typer.Argument(help="Input JSONL, as for `run`.")],
    provider: ProviderOpt = "openai",
    model: ModelOpt = None,
    prompt: PromptOpt = None,
    template: TemplateOpt = None,
    system: SystemOpt = None,
    id_field: IdFieldOpt = None,
    attach: AttachOpt = None,
    input_format: InputFormatOpt = "auto",
    csv_delimiter: CsvDelimiterOpt = None,
    csv_encoding: CsvEncodingOpt = DEFAULT_CSV_ENCODING,
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
        raise fail(str(exc)) from None
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


def report(
    outputs: Annotated[list[Path], typer.Argument(help="Output files of llmbatch runs (.gz and .zst too).")],
    json_output: Annotated[
        bool, Opt("--json", help="Print the report as JSON.", panel=DISPLAY, metavar="")
    ] = False,
    html: Annotated[
        str | None,
        Opt(
            "--html",
            help="Also write one self-contained HTML page of charts to FILE (- for stdout); needs "
            "the report extra.",
            panel=DISPLAY,
            metavar="FILE",
        ),
    ] = None,
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
        if html is None:
            found = read_report(outputs, price_in=price_in, price_out=price_out)
        else:
            found = _html_report(outputs, html, price_in=price_in, price_out=price_out)
    except LLMBatchError as exc:
        raise fail(str(exc)) from None
    if html == "-":
        return  # standard output holds the page
    if json_output:
        typer.echo(orjson.dumps(found.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        typer.echo(format_report(found))


def _html_report(
    outputs: list[Path], target: str, *, price_in: float | None, price_out: float | None
) -> Report:
    """Read the outputs once for the report and the page's charts; write the page."""
    from llmbatch.app.page import INSTALL, plotly_js, write_page

    script = plotly_js()
    if script is None:
        raise fail(f"report --html needs plotly, the report extra: {INSTALL}")
    from llmbatch.app.aggregate import read_aggregates
    from llmbatch.app.charts import figures

    found, agg = read_aggregates(outputs, price_in=price_in, price_out=price_out)
    found.percentiles(50, 95, 99)  # sorted once, before the page is made (the sort is the peak)
    charts = figures(found, agg)
    try:
        if target == "-":
            write_page(sys.stdout.buffer, found, agg, charts, script)
            sys.stdout.buffer.flush()
        else:
            with Path(target).open("wb") as out:
                write_page(out, found, agg, charts, script)
    except BrokenPipeError:
        raise fail("standard output was closed by its reader") from None
    except OSError as exc:
        raise fail(f"cannot write the page: {exc.strerror or exc}: {target}") from None
    if target != "-":
        typer.echo(f"report page: {target} ({Path(target).stat().st_size / 1e6:.1f} MB)", err=True)
    return found


def merge(
    files: Annotated[
        list[Path],
        typer.Argument(help="Outputs to join (shards of one input), oldest first.", show_default=False),
    ],
    output: Annotated[
        Path, Opt("--output", "-o", help="The merged file (replaced), or - for stdout.", panel=OUTPUT)
    ],
    ordered: OrderedOpt = False,
) -> None:
    """Join outputs into one file, one line per id (the newest: a later file is newer)."""
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
        raise fail(str(exc)) from None
    except BrokenPipeError:
        raise fail("standard output was closed by its reader") from None
    except OSError as exc:
        raise fail(f"cannot merge: {exc.strerror or exc}: {exc.filename}") from None
    notes = []
    if done.dropped:
        notes.append(f"{done.dropped:,} older line{'s' if done.dropped != 1 else ''} of an id dropped")
    if done.torn:
        notes.append(f"{done.torn:,} torn last line{'s' if done.torn != 1 else ''} skipped")
    more = f" ({'; '.join(notes)})" if notes else ""
    files_ = f"{done.files:,} file{'s' if done.files != 1 else ''}"
    into = "standard output" if to_stdout else output
    typer.echo(f"merged {files_} into {into}: {done.lines:,} lines{more}", err=True)


def export(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Outputs of llmbatch runs (shards too; .gz and .zst), oldest first.", show_default=False
        ),
    ],
    output: Annotated[
        Path, Opt("--output", "-o", help="The table (replaced whole).", panel=OUTPUT, metavar="FILE")
    ],
    to: Annotated[
        str | None,
        Opt(
            help="csv, parquet or jsonl (default: told by -o's name).",
            panel=OUTPUT,
            metavar="csv|parquet|jsonl",
        ),
    ] = None,
    ordered: OrderedOpt = False,
    spread: Annotated[
        bool,
        Opt(
            "--spread",
            help="One llm_answer.PROP column per top-level property of JSON object answers.",
            panel=OUTPUT,
        ),
    ] = False,
    input: Annotated[
        Path | None,
        Opt(
            "--input",
            help="The run's input: Batch-shaped lines get its data columns (joined on the line number, "
            "checked against the custom_id; rows in input order).",
            panel=INPUT,
            metavar="FILE",
        ),
    ] = None,
    input_format: InputFormatOpt = "auto",
    csv_delimiter: CsvDelimiterOpt = None,
    csv_encoding: CsvEncodingOpt = DEFAULT_CSV_ENCODING,
    id_field: IdFieldOpt = None,
    price_in: PriceInOpt = None,
    price_out: PriceOutOpt = None,
) -> None:
    """Finished outputs as one table (CSV, Parquet or JSONL), a row per id: the newest."""
    from llmbatch.app.export import Join, export_table
    from llmbatch.app.wiring import table_options
    from llmbatch.core.errors import ConfigError

    try:
        form = to or {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl"}.get(
            next((s for s in reversed(output.suffixes) if s not in (".gz", ".zst", ".zstd")), "").lower()
        )
        if form not in ("csv", "parquet", "jsonl"):
            raise ConfigError(
                f"--to must be csv, parquet or jsonl{'' if to else ' (the name of -o does not say)'}"
            )
        join = None
        if input is not None:
            options = table_options(input_format, csv_delimiter, csv_encoding)
            join = Join(input=input, tables=options, id_field=id_field)
        done = export_table(
            files, output, to=form, ordered=ordered, spread_answers=spread, join=join,  # type: ignore[arg-type]
            price_in=price_in, price_out=price_out,
        )  # fmt: skip
    except LLMBatchError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot export: {exc.strerror or exc}: {exc.filename}") from None
    notes = list(done.notes)
    if done.dropped:
        notes.append(f"{done.dropped:,} older line{'s' if done.dropped != 1 else ''} of an id left out")
    if done.other:
        notes.append(f"{done.other:,} line{'s' if done.other != 1 else ''} not llmbatch's left out")
    if done.unmatched:
        notes.append(f"{done.unmatched:,} rows without data columns (their input line names another id)")
    more = f" ({'; '.join(notes)})" if notes else ""
    typer.echo(f"exported {done.rows:,} rows to {output}{more}", err=True)
