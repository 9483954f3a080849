"""The command line: parse flags, merge the config file, run, exit with the right code."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, cast

import orjson
import typer

from llmbatch.errors import LLMBatchError
from llmbatch.settings import Settings, load_config

app = typer.Typer(
    name="llmbatch",
    help="Push JSONL rows through an OpenAI-compatible API: paced, validated, resumable.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Opt = typer.Option


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


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def run(
    input: Annotated[
        Path, typer.Argument(help="Input JSONL: Batch API lines, request bodies, or data items.")
    ],
    output: Annotated[Path, Opt("--output", "-o", help="Output JSONL (appended; a rerun resumes).")],
    provider: Annotated[str | None, Opt(help="openai (any compatible server) or fake (offline).")] = None,
    base_url: Annotated[str | None, Opt(help="API base URL, e.g. http://localhost:8000/v1 for vLLM.")] = None,
    api_key_file: Annotated[
        Path | None, Opt(help="Read the API key from this file (else OPENAI_API_KEY).")
    ] = None,
    model: Annotated[str | None, Opt("--model", "-m", help="Fill or override each request's model.")] = None,
    prompt: Annotated[
        str | None, Opt(help="Prompt template for data items, with {field} placeholders.")
    ] = None,
    template: Annotated[Path | None, Opt(help="Read the prompt template from a file.")] = None,
    system: Annotated[str | None, Opt(help="System message for templated requests.")] = None,
    id_field: Annotated[str | None, Opt(help="Data items' id field (else the line number).")] = None,
    endpoint: Annotated[str | None, Opt(help="/v1/chat/completions (default) or /v1/embeddings.")] = None,
    param: Annotated[list[str] | None, Opt(help="Extra body parameter KEY=JSON, e.g. temperature=0.")] = None,
    max_tokens: Annotated[int | None, Opt(help="Shorthand for --param max_tokens=N.")] = None,
    concurrency: Annotated[int | None, Opt("--concurrency", "-c", help="Requests in flight at most.")] = None,
    rpm: Annotated[float | None, Opt(help="Requests per minute allowed by your provider.")] = None,
    tpm: Annotated[float | None, Opt(help="Tokens per minute allowed by your provider.")] = None,
    timeout: Annotated[float | None, Opt(help="Seconds to wait for one answer.")] = None,
    max_requests: Annotated[int | None, Opt(help="Answered requests per item, re-asks included.")] = None,
    max_retries: Annotated[int | None, Opt(help="Transport retries per item (429, 5xx, timeouts).")] = None,
    validate: Annotated[
        list[str] | None, Opt(help="json | schema:FILE | regex:PATTERN | python:MODULE:FN (repeatable).")
    ] = None,
    schema: Annotated[
        Path | None,
        Opt(help="JSON Schema file: ask for it (response_format) and validate answers against it."),
    ] = None,
    require_finish: Annotated[
        str | None, Opt(help="Answers must end with this finish_reason (stop).")
    ] = None,
    merged: Annotated[
        bool, Opt(help="Write each data item with its answer instead of Batch API lines.")
    ] = False,
    rejects: Annotated[
        Path | None, Opt(help="Where bad input lines go (default OUTPUT.rejects.jsonl).")
    ] = None,
    fresh: Annotated[bool, Opt(help="Start over: empty the output instead of resuming.")] = False,
    number_duplicates: Annotated[
        bool, Opt(help="Give duplicate ids a #LINE suffix instead of rejecting.")
    ] = False,
    transport: Annotated[
        str | None, Opt(help="fast (default) or sdk: the openai SDK's per-request path.")
    ] = None,
    fake_latency_ms: Annotated[float | None, Opt(help="The fake provider's simulated latency.")] = None,
    live: Annotated[bool, Opt("--live/--no-live", help="Live panel on a terminal, or plain lines.")] = True,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="Only errors and the final summary.")] = False,
    progress_every: Annotated[float | None, Opt(help="Seconds between plain progress lines.")] = None,
    summary_json: Annotated[Path | None, Opt(help="Also write the final summary as JSON here.")] = None,
    price_in: Annotated[
        float | None, Opt(help="USD per million prompt tokens (overrides the table).")
    ] = None,
    price_out: Annotated[float | None, Opt(help="USD per million completion tokens.")] = None,
    config: Annotated[Path | None, Opt(help="Config file (default ./llmbatch.toml if present).")] = None,
) -> None:
    """Send one request per input line and append one result line per item to OUTPUT."""
    from llmbatch.batch import run as run_batch

    try:
        flags: dict[str, Any] = {
            "prompt": _read_template(template) if template is not None else prompt,
            "provider": provider,
            "base_url": base_url,
            "api_key_file": api_key_file,
            "model": model,
            "system": system,
            "id_field": id_field,
            "endpoint": endpoint,
            "concurrency": concurrency,
            "rpm": rpm,
            "tpm": tpm,
            "timeout": timeout,
            "max_requests": max_requests,
            "max_retries": max_retries,
            "validate": tuple(validate) if validate else None,
            "require_finish": require_finish,
            "schema": schema,
            "output_format": "merged" if merged else None,
            "rejects": rejects,
            "transport": transport,
            "fake_latency_ms": fake_latency_ms,
            "progress_every": progress_every,
            "summary_json": summary_json,
            "price_in": price_in,
            "price_out": price_out,
        }
        settings = _settings(
            input,
            output,
            config=config,
            param=param,
            max_tokens=max_tokens,
            flags=flags,
            fresh=fresh,
            number_duplicates=number_duplicates,
            live=live,
            quiet=quiet,
        )
        _check(settings)
        _, code = run_batch(settings)
    except LLMBatchError as exc:
        raise _fail(str(exc)) from None
    raise typer.Exit(code)


def _settings(
    input: Path,
    output: Path,
    *,
    config: Path | None,
    param: list[str] | None,
    max_tokens: int | None,
    flags: dict[str, Any],
    **fixed: Any,
) -> Settings:
    """Settings from the config file, overridden by the flags that were given."""
    conf = load_config(config)
    params = {**conf.pop("params", {}), **_params(param)}
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    merged = {**conf, **{k: v for k, v in flags.items() if v is not None}}
    for key in ("api_key_file", "rejects", "summary_json", "schema"):
        if isinstance(merged.get(key), str):
            merged[key] = Path(merged[key])
    defaults = {f.name: f.default for f in fields(Settings)}
    for key, value in fixed.items():  # switches: the config's value unless the flag was flipped
        if key not in merged or value != defaults[key]:
            merged[key] = value
    return Settings(input=input, output=output, params=params, **merged)


def _check(s: Settings) -> None:
    if s.provider not in ("openai", "fake"):
        raise _fail(f"unknown provider {s.provider!r}: use openai or fake")
    if s.transport not in ("fast", "sdk"):
        raise _fail(f"unknown transport {s.transport!r}: use fast or sdk")
    for name in ("concurrency", "max_requests"):
        if cast(int, getattr(s, name)) < 1:
            raise _fail(f"--{name.replace('_', '-')} must be at least 1")
    if s.max_retries < 0:
        raise _fail("--max-retries must be 0 or more")
    for name in ("rpm", "tpm", "timeout"):
        value = getattr(s, name)
        if value is not None and value <= 0:
            raise _fail(f"--{name} must be positive")


@app.command()
def estimate(
    input: Annotated[Path, typer.Argument(help="Input JSONL, as for `run`.")],
    provider: Annotated[str | None, Opt(help="openai or fake (decides the default model).")] = None,
    model: Annotated[str | None, Opt("--model", "-m", help="Fill or override each request's model.")] = None,
    prompt: Annotated[str | None, Opt(help="Prompt template for data items.")] = None,
    template: Annotated[Path | None, Opt(help="Read the prompt template from a file.")] = None,
    system: Annotated[str | None, Opt(help="System message for templated requests.")] = None,
    id_field: Annotated[str | None, Opt(help="Data items' id field.")] = None,
    endpoint: Annotated[str | None, Opt(help="/v1/chat/completions (default) or /v1/embeddings.")] = None,
    param: Annotated[list[str] | None, Opt(help="Extra body parameter KEY=JSON.")] = None,
    max_tokens: Annotated[int | None, Opt(help="Shorthand for --param max_tokens=N.")] = None,
    schema: Annotated[Path | None, Opt(help="JSON Schema file, as for `run`.")] = None,
    answer_tokens: Annotated[
        int, Opt(help="Expected answer length in tokens when max_tokens is unset.")
    ] = 256,
    rpm: Annotated[float | None, Opt(help="Requests per minute you will run at.")] = None,
    tpm: Annotated[float | None, Opt(help="Tokens per minute you will run at.")] = None,
    price_in: Annotated[float | None, Opt(help="USD per million prompt tokens.")] = None,
    price_out: Annotated[float | None, Opt(help="USD per million completion tokens.")] = None,
    json_output: Annotated[bool, Opt("--json", help="Print the estimate as JSON.")] = False,
    config: Annotated[Path | None, Opt(help="Config file (default ./llmbatch.toml if present).")] = None,
) -> None:
    """Count requests, tokens, cost and time before spending anything. Sends nothing."""
    from llmbatch.batch import make_builder, price_of
    from llmbatch.estimate import estimate as make_estimate

    try:
        flags: dict[str, Any] = {
            "prompt": _read_template(template) if template is not None else prompt,
            "provider": provider,
            "model": model,
            "system": system,
            "id_field": id_field,
            "endpoint": endpoint,
            "schema": schema,
            "rpm": rpm,
            "tpm": tpm,
            "price_in": price_in,
            "price_out": price_out,
        }
        settings = _settings(
            input,
            input.with_name(input.name + ".out"),
            config=config,
            param=param,
            max_tokens=max_tokens,
            flags=flags,
        )
        if not input.is_file():
            raise _fail(f"input file not found: {input}")
        est = make_estimate(input, make_builder(settings), answer_tokens=answer_tokens)
        price = price_of(settings, est.model)
    except LLMBatchError as exc:
        raise _fail(str(exc)) from None
    data = est.as_dict(price, rpm=settings.rpm, tpm=settings.tpm)
    if json_output:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    rng = est.cost_range(price)
    minutes = data["minutes_at_limits"]
    no_price = "unknown (no price for this model: --price-in/--price-out)"
    no_limits = "no --rpm/--tpm given: bound by latency and --concurrency"
    lines = [
        f"lines:            {est.lines:,} ({est.requests:,} requests, {est.rejects:,} would be rejected)",
        f"prompt tokens:    ~{est.prompt_tokens:,} (characters/4, +-25%)",
        f"answer tokens:    ~{est.answer_tokens:,} expected, {est.answer_tokens_max:,} at most",
        "cost:             " + (f"{_usd(rng[0])} to {_usd(rng[1])}" if rng else no_price),
        "time at limits:   " + (_minutes(minutes) if minutes is not None else no_limits),
    ]
    lines.extend(f"  {r}" for r in est.first_rejects)
    typer.echo("\n".join(lines))


def _usd(x: float) -> str:
    return f"${x:,.2f}" if x >= 1 else f"${x:.4f}"


def _minutes(m: float) -> str:
    if m < 1:
        return f"{m * 60:.0f} s"
    if m < 120:
        return f"{m:.1f} min"
    return f"{m / 60:.1f} h"


def _read_template(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(f"cannot read template {path}: {exc.strerror}") from None


@app.command()
def version() -> None:
    """Print llmbatch's version."""
    from llmbatch import __version__

    typer.echo(__version__)


def main() -> None:
    app(prog_name="llmbatch")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())  # type: ignore[func-returns-value]
