"""The parts a run's settings ask for: the request builder, the provider, the price,
the shard's paths, where requests go, the budget shared through Redis."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from llmbatch.app.checks import DEFAULT_BASE_URL, check_api_key
from llmbatch.app.settings import Settings
from llmbatch.core.cachekey import ANTHROPIC_HOST, fixed_prefix, prompt_cache_key, sends_key
from llmbatch.core.endpoints import CHAT, ENDPOINTS, MESSAGES, known_endpoints, normalise_endpoint
from llmbatch.core.errors import ConfigError
from llmbatch.core.structured import response_format
from llmbatch.core.tiers import DEFAULT_TIER, FLEX, tier_of
from llmbatch.core.values import Request
from llmbatch.cost.prices import FAKE_FREE, Price, price_for, table_price
from llmbatch.files import sidecars
from llmbatch.input.attach import LIMITS, Attacher
from llmbatch.input.build import RequestBuilder, Template
from llmbatch.input.source import Partition, Source
from llmbatch.input.tables import INPUT_FORMATS, TableOptions
from llmbatch.output.records import server_hash
from llmbatch.providers.base import Provider
from llmbatch.scale.shard import PER_OUTPUT, PLACEHOLDER, parse_shard
from llmbatch.validate.asked import AskedSchema, asked_schema

if TYPE_CHECKING:
    from llmbatch.modes.batch.state import BatchState
    from llmbatch.providers.openai_batches import BatchAPI
    from llmbatch.scale.budget import SharedBudget

__all__ = [
    "attacher_for",
    "base_url_of",
    "batch_api",
    "batches_done",
    "builder_for",
    "for_shard",
    "join_budget",
    "make_provider",
    "run_price",
    "run_tier",
    "schema_asked",
    "schema_note",
    "server_of",
    "source_for",
    "table_options",
]


def table_options(input_format: str, csv_delimiter: str | None, csv_encoding: str) -> TableOptions:
    """How the flags say to read an input (--input-format, --csv-delimiter, --csv-encoding)."""
    if input_format not in INPUT_FORMATS:
        raise ConfigError(f"--input-format must be one of {', '.join(INPUT_FORMATS)}, not {input_format!r}")
    if csv_delimiter in ("\\t", "tab"):
        csv_delimiter = "\t"  # what a shell passes for a tab
    return TableOptions(format=input_format, delimiter=csv_delimiter, encoding=csv_encoding)  # type: ignore[arg-type]


def source_for(settings: Settings, shard: Partition | None = None) -> Source:
    """The input a run's settings name, read as they say (run and estimate alike)."""
    tables = table_options(settings.input_format, settings.csv_delimiter, settings.csv_encoding)
    builder = builder_for(settings)
    return Source(
        settings.input, builder, number_duplicates=settings.number_duplicates, shard=shard, tables=tables
    )


def builder_for(settings: Settings) -> RequestBuilder:
    """The builder a run's settings ask for (run and estimate alike)."""
    endpoint = MESSAGES if settings.provider == "anthropic" else None
    if settings.endpoint is not None:
        endpoint = normalise_endpoint(settings.endpoint)
        if endpoint is None:
            raise ConfigError(f"unknown endpoint {settings.endpoint!r} (use {known_endpoints()})")
    params = dict(settings.params)
    if settings.service_tier is not None:
        params.setdefault("service_tier", settings.service_tier)
    asked = schema_asked(settings)
    cache_key = cache_prefix = None
    if settings.prompt is not None and settings.provider == "anthropic":
        if sends_key(settings.prompt_cache_key, base_url_of(settings), ANTHROPIC_HOST):
            cache_prefix = fixed_prefix(settings.prompt)
    elif settings.prompt is not None and sends_key(settings.prompt_cache_key, base_url_of(settings)):
        cache_key = prompt_cache_key(settings.prompt, settings.system)
    return RequestBuilder(
        model=settings.model,
        template=Template(settings.prompt) if settings.prompt is not None else None,
        system=settings.system,
        id_field=settings.id_field,
        endpoint=endpoint,
        params=params,
        default_model="fake" if settings.provider == "fake" else None,
        max_tokens=settings.max_tokens,
        schema=response_format(asked.schema, asked.name, asked.strict) if asked is not None else None,
        validating=bool(settings.validate) or settings.schema is not None,
        attach=attacher_for(settings, endpoint),
        cache_key=cache_key,
        cache_prefix=cache_prefix,
    )


def attacher_for(settings: Settings, endpoint: str | None) -> Attacher | None:
    """What --attach reads: the fields named, relative paths from the input's folder,
    the provider's size limits. Only data items filling a template carry attachments, and
    only to chat, the Responses API and the Messages API."""
    if not settings.attach:
        return None
    if settings.prompt is None:
        raise ConfigError("--attach adds files to data items' prompts: give --prompt or --template")
    if not ENDPOINTS[endpoint or CHAT].takes_attachments:
        takes = ", ".join(path for path, e in ENDPOINTS.items() if e.takes_attachments)
        raise ConfigError(f"--attach: {endpoint} takes no attachments ({takes} do)")
    folder = Path.cwd() if str(settings.input) == "-" else settings.input.absolute().parent
    # A provider with limits of its own has its row in LIMITS; the others are OpenAI-compatible.
    return Attacher(tuple(settings.attach), folder, LIMITS.get(settings.provider, LIMITS["openai"]))


def schema_asked(settings: Settings) -> AskedSchema | None:
    """What --schema asks for; with --strict, a schema outside the strict subset is a
    ConfigError naming the first reason."""
    if settings.strict and settings.provider == "anthropic":
        raise ConfigError(
            "--strict is OpenAI's (strict: true in response_format); with --provider anthropic, --schema "
            "goes as a forced tool and every answer is checked against it"
        )
    if settings.schema is None:
        if settings.strict:
            raise ConfigError("--strict needs --schema (the schema to send with strict: true)")
        return None
    asked = asked_schema(settings.schema)
    if settings.strict and asked.problem is not None:
        raise ConfigError(
            f"--strict: schema {settings.schema} does not fit OpenAI's strict subset: {asked.problem}"
        )
    return asked


def schema_note(settings: Settings) -> str | None:
    """The one line a run says when its schema goes without strict: true, and why."""
    asked = schema_asked(settings)
    if asked is None or asked.problem is None or settings.provider == "anthropic":
        return None  # Anthropic's forced tool has no strict flag to go without
    return (
        f"--schema {settings.schema} is sent without strict: true (outside OpenAI's strict subset: "
        f"{asked.problem}); answers are still checked against it (--strict makes this an error)"
    )


def make_provider(settings: Settings) -> Provider:
    if settings.provider == "fake":
        from llmbatch.providers.fake import FakeProvider

        return FakeProvider(latency_ms=settings.fake_latency_ms, jitter_ms=settings.fake_latency_ms / 2)
    key = check_api_key(settings)
    assert key is not None
    if settings.provider == "anthropic":
        from llmbatch.providers.anthropic import AnthropicProvider

        return AnthropicProvider(
            api_key=key,
            base_url=settings.base_url,
            concurrency=settings.concurrency,
            timeout=settings.timeout,
        )
    from llmbatch.providers.openai import OpenAIProvider

    return OpenAIProvider(
        api_key=key,
        base_url=settings.base_url,
        concurrency=settings.concurrency,
        transport=settings.transport,
        timeout=settings.timeout,
    )


def batch_api(
    settings: Settings, provider: Provider, state: BatchState, log: Callable[[str], None]
) -> BatchAPI:
    """The provider's batches for --batch-api: OpenAI's Batch API through the SDK, or
    Anthropic's Message Batches (their requests spooled beside the output)."""
    if settings.provider == "anthropic":
        from llmbatch.modes.batch.state import ChunkState
        from llmbatch.providers.anthropic import AnthropicProvider
        from llmbatch.providers.anthropic_batches import AnthropicBatches

        assert isinstance(provider, AnthropicProvider)

        def claimed() -> set[str]:
            chunks = state.chunks(ChunkState.RUNNING, ChunkState.COLLECTED)
            return {c.batch_id for c in chunks if c.batch_id}

        def intent(metadata: dict[str, str]) -> tuple[int, float]:
            chunk = state.chunk(int(metadata["llmbatch_chunk"]))
            return chunk.items, chunk.submitted or chunk.created

        def ids(metadata: dict[str, str]) -> list[str]:
            return state.ids(int(metadata["llmbatch_chunk"]))

        def known() -> Iterator[str]:
            for chunk in state.chunks(ChunkState.CREATING, ChunkState.RUNNING):
                yield from state.ids(chunk.id)

        spool = sidecars.batch_spool(settings.output)
        return AnthropicBatches(
            provider, spool=spool, intent=intent, ids=ids, known=known, claimed=claimed, log=log
        )
    from llmbatch.providers.openai import OpenAIProvider
    from llmbatch.providers.openai_batches import RemoteBatches

    assert isinstance(provider, OpenAIProvider)
    return RemoteBatches(provider.client, log=log)


def batches_done(settings: Settings, state: BatchState) -> None:
    """Every batch collected: the Message Batches spool is no longer needed (it maps
    hashed custom_ids back while a batch may still be collected, and is rebuilt by the
    next run that makes batches)."""
    if settings.provider == "anthropic" and not state.open_batches():
        shutil.rmtree(sidecars.batch_spool(settings.output), ignore_errors=True)


def run_price(settings: Settings, model: str | None = None, tier: str | None = None) -> Price | None:
    """The price a run's settings charge for `model` (or --model) on the service `tier`
    (else --service-tier's); with --batch-api, the batch price. A flex run with
    --flex-fallback carries the default tier's price too (`Price.fallback`). The offline
    fake model is free, and so is an endpoint that bills nothing (moderations)."""
    endpoint = normalise_endpoint(settings.endpoint) if settings.endpoint is not None else None
    if endpoint is not None and ENDPOINTS[endpoint].free:
        return Price(0.0, 0.0, source=f"{endpoint} is free")
    overrides = {m: Price(i, o) for m, (i, o) in settings.prices.items()}
    model = settings.model or model or ("fake" if settings.provider == "fake" else None)
    if settings.provider == "fake" and settings.price_in is None and settings.price_out is None:
        return table_price(model or "", overrides) or FAKE_FREE
    tier = tier or settings.service_tier
    price = price_for(
        model,
        overrides,
        price_in=settings.price_in,
        price_out=settings.price_out,
        base_url=settings.base_url,
        batch=settings.batch_api,
        tier=tier,
    )
    if price is not None and tier == FLEX and settings.flex_fallback is not None:
        price = dataclasses.replace(price, fallback=run_price(settings, model, DEFAULT_TIER))
    if price is not None and settings.batch_api and settings.deadline is not None:
        live = run_price(dataclasses.replace(settings, batch_api=False, deadline=None), model, tier)
        price = dataclasses.replace(price, live=live)
    if price is not None and settings.escalate:  # each --escalate model at its own price
        alone = dataclasses.replace(settings, escalate=())
        escalate = settings.escalate
        others = tuple((m, run_price(dataclasses.replace(alone, model=m), m, tier)) for m in escalate)
        price = dataclasses.replace(price, escalation=others)
    return price


def run_tier(settings: Settings, first: Request | None) -> str | None:
    """The service tier a run is priced at: the first request's (--service-tier fills
    the bodies that name none), else --service-tier. Flex with --batch-api: exit 2."""
    tier = tier_of(first.body) if first is not None else settings.service_tier
    if tier == FLEX and settings.batch_api:
        raise ConfigError(
            "service_tier flex is a live tier (synchronous, at the Batch API's price): it cannot go "
            "through --batch-api; send it live, or drop service_tier"
        )
    return tier


def for_shard(settings: Settings) -> Settings:
    """The settings of this shard's run: ``{shard}`` expanded in every per-output path.
    With more than one shard the output must say where each shard's goes."""
    if settings.shard is None:
        return settings
    shard = parse_shard(settings.shard)
    if shard.count > 1 and PLACEHOLDER not in str(settings.output):
        raise ConfigError(
            f"with --shard {shard}, each shard needs an output of its own: put {PLACEHOLDER} in -o "
            f"(e.g. -o out-{PLACEHOLDER}.jsonl), and `llmbatch merge` joins them"
        )
    changes: dict[str, Path] = {}
    for name in PER_OUTPUT:
        path = getattr(settings, name)
        if path is not None and PLACEHOLDER in str(path):
            changes[name] = Path(str(path).replace(PLACEHOLDER, str(shard.index)))
    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]


def base_url_of(settings: Settings) -> str:
    """Where this run's requests go."""
    if settings.provider == "fake":
        return "fake"
    if settings.provider == "anthropic":
        from llmbatch.providers.anthropic import anthropic_root

        return anthropic_root(settings.base_url)
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
