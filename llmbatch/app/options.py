"""The command line's parts: help panels, the options several commands share (declared
once), and the reading of the flags given into `Settings`.

Each option's parameter name is the `Settings` field it sets; only the options given on
the command line override the config file (click tells given from default), so a
default shown in `--help` is the real one and `--live` beats ``live = false``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from llmbatch.app.settings import Settings, load_config, make_settings
from llmbatch.core.endpoints import DEFAULT_MESSAGES_MAX_TOKENS
from llmbatch.core.errors import ExitCode, LLMBatchError

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
METRICS = "Metrics (Prometheus)"


def Opt(*names: str, help: str, panel: str, show_default: bool = True, metavar: str | None = None) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=show_default, metavar=metavar)


# Options `run` and `estimate` share, declared once.
ProviderOpt = Annotated[
    str,
    Opt(
        help="openai (any compatible server), anthropic (the Messages API; key in ANTHROPIC_API_KEY) "
        "or fake (offline).",
        panel=REQUEST,
        metavar="openai|anthropic|fake",
    ),
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
InputFormatOpt = Annotated[
    str,
    Opt(
        help="auto (by the name: .csv, .tsv, .parquet, compressed or not; else by the first bytes), "
        "jsonl, csv, tsv or parquet (CSV from standard input needs csv).",
        panel=INPUT,
        metavar="auto|jsonl|csv|tsv|parquet",
    ),
]
CsvDelimiterOpt = Annotated[
    str | None,
    Opt(
        help="CSV's field delimiter (default , and for TSV a tab; \\t or tab for a tab).",
        panel=INPUT,
        metavar="C",
    ),
]
CsvEncodingOpt = Annotated[
    str, Opt(help="CSV's text encoding (a byte-order mark is dropped).", panel=INPUT, metavar="NAME")
]
EndpointOpt = Annotated[
    str | None,
    Opt(
        help="/v1/chat/completions (a template's default), /v1/responses, /v1/completions, "
        "/v1/embeddings, /v1/moderations or /v1/messages (Anthropic's: --provider anthropic's "
        "default). Without it a bare body's is told by its keys: "
        "messages chat, prompt completions, input embeddings.",
        panel=REQUEST,
        metavar="TEXT",
    ),
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
    int | None,
    Opt(
        help="The answer's ceiling: max_tokens (chat, completions, messages), max_output_tokens "
        f"(responses). Anthropic's Messages API requires one: {DEFAULT_MESSAGES_MAX_TOKENS} unless "
        "given here or in the body.",
        panel=REQUEST,
        metavar="N",
    ),
]
RpmOpt = Annotated[
    float | None, Opt(help="Requests per minute allowed by your provider.", panel=LIMITS, metavar="N")
]
TpmOpt = Annotated[
    float | None,
    Opt(
        help="Tokens per minute allowed by your provider (Anthropic: input tokens; see --output-tpm).",
        panel=LIMITS,
        metavar="N",
    ),
]
OutputTpmOpt = Annotated[
    float | None,
    Opt(
        help="Output tokens per minute, limited apart (Anthropic's; else learned from its headers).",
        panel=LIMITS,
        metavar="N",
    ),
]
PriceInOpt = Annotated[
    float | None,
    Opt(help="USD per million prompt tokens (overrides the price database).", panel=DISPLAY, metavar="N"),
]
PriceOutOpt = Annotated[
    float | None, Opt(help="USD per million completion tokens.", panel=DISPLAY, metavar="N")
]
# `merge` and `export`'s.
OrderedOpt = Annotated[
    bool, Opt("--ordered", help="In input line order (an external sort: memory stays bounded).", panel=OUTPUT)
]
ConfigOpt = Annotated[
    Path | None, Opt(help="Config file (default ./llmbatch.toml if present).", panel=DISPLAY, metavar="FILE")
]
SchemaOpt = Annotated[
    Path | None,
    Opt(
        help="JSON Schema file, or python:MODULE:Model (a pydantic model): ask for it "
        "(response_format, or the Responses API's text.format; strict: true when it fits OpenAI's "
        "strict subset) and validate answers against it.",
        panel=VALIDATION,
        metavar="FILE|python:MOD:Model",
    ),
]
AttachOpt = Annotated[
    list[str] | None,
    Opt(
        help="A data item field holding a file path (relative: to the input's folder), a list of "
        "paths, or an http(s)/data: URL: the images and PDFs are sent with the prompt (repeatable).",
        panel=INPUT,
        metavar="FIELD",
    ),
]
DEFAULT_ENDPOINT: str | None = None  # chat for templates; a bare body's by its keys


# Options that are not a Settings field of the same name.
_NOT_SETTINGS = frozenset({"config", "template", "param", "merged", "json_output", "answer_tokens"})


def given_flags(ctx: typer.Context) -> dict[str, Any]:
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
    given = given_flags(ctx)
    config, config_path = load_config(ctx.params.get("config"))
    flags = {k: v for k, v in given.items() if k not in _NOT_SETTINGS}
    flags["input"] = Path(input)
    flags["output"] = Path(output)
    if "template" in given:
        flags["prompt"] = _read_template(given["template"])
    params = _params(given.get("param"))
    if params:
        flags["params"] = params
    if given.get("merged"):
        flags["output_format"] = "merged"
    if "validate" in flags:
        flags["validate"] = tuple(flags["validate"])
    if "attach" in flags:
        flags["attach"] = tuple(flags["attach"])
    return make_settings(flags=flags, config=config, config_path=config_path)


def fail(message: str, code: ExitCode = ExitCode.USAGE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(int(code))
