"""Everything a run needs to know, frozen, with every default named once; the config
file; and the checking of values, wherever they come from.

Flags override the config file (``llmbatch.toml`` in the working directory, or
``--config FILE``), which overrides the defaults here. The file holds what a cron job
repeats: ``model``, ``rpm``, ``tpm``, ``concurrency``, ``validate``, ``prices`` ...
`make_settings` checks every value's type and range, for flags and file alike, and
turns a bad one into a one-line `ConfigError` naming the flag or the file's key.
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from llmbatch.app.display import DEFAULT_PROGRESS_EVERY
from llmbatch.core.cachekey import DEFAULT_CACHE_KEY_MODE, CacheKeyMode
from llmbatch.core.errors import ConfigError
from llmbatch.core.retry import DEFAULT_MAX_RETRIES, DEFAULT_MAX_RETRY_WAIT, RetryPolicy
from llmbatch.core.tiers import FLEX, FLEX_TIMEOUT
from llmbatch.files import sidecars
from llmbatch.input.tables import DEFAULT_CSV_ENCODING, InputFormat
from llmbatch.modes.batch.mode import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_REQUESTS, DEFAULT_POLL_EVERY
from llmbatch.modes.deadline import DEFAULT_DEADLINE_MARGIN
from llmbatch.modes.live.engine import DEFAULT_CONCURRENCY, DEFAULT_CONNECT_GRACE, DEFAULT_MAX_INFLIGHT_BYTES
from llmbatch.modes.outcome import DEFAULT_MAX_REQUESTS, DEFAULT_RETRY
from llmbatch.providers.anthropic_batches import DEFAULT_MESSAGE_BATCH_BYTES, DEFAULT_MESSAGE_BATCH_REQUESTS
from llmbatch.providers.base import DEFAULT_TIMEOUT
from llmbatch.providers.fake import DEFAULT_LATENCY_MS as DEFAULT_FAKE_LATENCY_MS

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_BATCH_REQUESTS",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_CONNECT_GRACE",
    "DEFAULT_FAKE_LATENCY_MS",
    "DEFAULT_MAX_INFLIGHT_BYTES",
    "DEFAULT_MAX_REQUESTS",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MAX_RETRY_WAIT",
    "DEFAULT_METRICS_EVERY",
    "DEFAULT_METRICS_JOB",
    "DEFAULT_POLL_EVERY",
    "DEFAULT_PROGRESS_EVERY",
    "DEFAULT_TIMEOUT",
    "FLEX_TIMEOUT",
    "Settings",
    "load_config",
    "make_settings",
    "read_api_key",
]

CONFIG_NAME = "llmbatch.toml"
# The metrics' defaults (llmbatch.app.metrics) are here so that reading the flags does
# not import prometheus_client: seconds between rewrites and pushes, the Pushgateway job.
DEFAULT_METRICS_EVERY = 5.0
DEFAULT_METRICS_JOB = "llmbatch"


def _at_least(low: float, *, strict: bool = False) -> dict[str, Any]:
    return {"low": low, "strict": strict}


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    input: Path
    output: Path
    provider: Literal["openai", "fake", "anthropic"] = "openai"
    base_url: str | None = None
    api_key_file: Path | None = None
    model: str | None = None
    prompt: str | None = None
    system: str | None = None
    id_field: str | None = None
    endpoint: str | None = None  # None: a bare body's by its keys, a template's chat
    params: dict[str, Any] = field(default_factory=dict)
    concurrency: int = field(default=DEFAULT_CONCURRENCY, metadata=_at_least(1))
    rpm: float | None = field(default=None, metadata=_at_least(0, strict=True))
    tpm: float | None = field(default=None, metadata=_at_least(0, strict=True))
    # Output tokens per minute, limited apart from --tpm's input tokens (Anthropic's).
    output_tpm: float | None = field(default=None, metadata=_at_least(0, strict=True))
    timeout: float | None = field(default=DEFAULT_TIMEOUT, metadata=_at_least(0, strict=True))
    max_requests: int = field(default=DEFAULT_MAX_REQUESTS, metadata=_at_least(1))
    max_retries: int = field(default=DEFAULT_MAX_RETRIES, metadata=_at_least(0))
    max_retry_wait: float = field(default=DEFAULT_MAX_RETRY_WAIT, metadata=_at_least(0))
    max_cost: float | None = field(default=None, metadata=_at_least(0, strict=True))
    connect_grace: float = field(default=DEFAULT_CONNECT_GRACE, metadata=_at_least(0, strict=True))
    max_tokens: int | None = field(default=None, metadata=_at_least(1))  # each endpoint's ceiling
    validate: tuple[str, ...] = ()
    schema: Path | None = None  # structured outputs + a schema validator, in one flag
    strict: bool = False  # --schema must go strict: true (else exit 2), not quietly non-strict
    require_finish: str | None = None
    reask_refusals: bool = False  # a refusal is asked again like an invalid answer
    escalate: tuple[str, ...] = ()  # the models an item still invalid goes on to, in order
    # Templated requests' prompt_cache_key: to OpenAI's API only, any server, or none.
    prompt_cache_key: CacheKeyMode = DEFAULT_CACHE_KEY_MODE
    output_format: Literal["batch", "merged"] = "batch"
    ordered: bool = False  # the output in input order
    rejects: Path | None = None
    fresh: bool = False
    force: bool = False  # a file that is not an llmbatch output may be appended to, or emptied by --fresh
    redo: str | None = None  # comma list: failed, invalid, stale, all, none
    keep_stale: bool = False
    revalidate: bool = False
    max_items: int | None = field(default=None, metadata=_at_least(1))
    cache: Path | None = None
    batch_api: bool = False
    # Per batch at most; None: the provider's limits (`batch_limits`).
    batch_requests: int | None = field(default=None, metadata=_at_least(1))
    batch_bytes: int | None = field(default=None, metadata=_at_least(1024))
    batch_max_tokens: int | None = field(default=None, metadata=_at_least(1))
    poll_every: float = field(default=DEFAULT_POLL_EVERY, metadata=_at_least(0, strict=True))
    no_wait: bool = False
    cancel: bool = False
    then: Literal["batch", "live"] = "batch"  # where a batch's follow-ups go
    deadline: str | None = None  # --batch-api, done by then: an ISO time or a duration (6h)
    deadline_margin: float = field(default=DEFAULT_DEADLINE_MARGIN, metadata=_at_least(0))
    number_duplicates: bool = False
    # Tables as input (llmbatch.input.tables): the format (auto: by the name, else the first bytes),
    # and for CSV the delimiter (a comma; TSV's a tab) and encoding.
    input_format: InputFormat = "auto"
    csv_delimiter: str | None = None
    csv_encoding: str = DEFAULT_CSV_ENCODING
    transport: Literal["fast", "sdk"] = "fast"
    fake_latency_ms: float = field(default=DEFAULT_FAKE_LATENCY_MS, metadata=_at_least(0))
    live: bool = True
    quiet: bool = False
    progress_every: float = field(default=DEFAULT_PROGRESS_EVERY, metadata=_at_least(0, strict=True))
    summary_json: Path | None = None
    price_in: float | None = field(default=None, metadata=_at_least(0))
    price_out: float | None = field(default=None, metadata=_at_least(0))
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Beyond one machine (llmbatch.scale.budget, llmbatch.scale.shard): a budget shared through Redis
    # by every process that names the same key, and this process's share of the input.
    redis: str | None = None  # redis://[:password@]host[:port][/db]; LLMBATCH_REDIS_URL
    redis_key: str | None = None  # default: from the base URL, model and API key's fingerprint
    shard: str | None = None  # "K/N"
    # The service tier asked for (llmbatch.core.tiers), and after how many capacity 429s
    # a flex item is asked on the default tier.
    service_tier: Literal["flex", "priority", "default", "auto"] | None = None
    flex_fallback: int | None = field(default=None, metadata=_at_least(1))
    # Metrics for Prometheus (llmbatch.app.metrics): a file for node_exporter's textfile
    # collector, a Pushgateway, the job it is pushed under, and how often both are renewed.
    # --attach: data item fields holding files (images, PDFs) or URLs the requests carry.
    attach: tuple[str, ...] = ()
    max_inflight_bytes: int = field(default=DEFAULT_MAX_INFLIGHT_BYTES, metadata=_at_least(1024))
    metrics_file: Path | None = None
    pushgateway: str | None = None  # http://host:9091
    metrics_job: str = DEFAULT_METRICS_JOB
    metrics_every: float = field(default=DEFAULT_METRICS_EVERY, metadata=_at_least(0, strict=True))

    @property
    def retry(self) -> RetryPolicy:
        """The run's retry policy: the engine's backoff, these counts and caps."""
        return replace(DEFAULT_RETRY, retries=self.max_retries, max_wait=self.max_retry_wait)

    @property
    def batch_limits(self) -> tuple[int, int]:
        """Requests and bytes per batch at most: --batch-requests and --batch-bytes, else
        the provider's (OpenAI: 50,000 and 200 MB; Anthropic: 100,000 and 256 MB)."""
        if self.provider == "anthropic":
            requests, size = DEFAULT_MESSAGE_BATCH_REQUESTS, DEFAULT_MESSAGE_BATCH_BYTES
        else:
            requests, size = DEFAULT_BATCH_REQUESTS, DEFAULT_BATCH_BYTES
        return self.batch_requests or requests, self.batch_bytes or size

    @property
    def rejects_path(self) -> Path:
        return self.rejects or sidecars.rejects(self.output)


# Settings the config file may not hold: they name this run's own files.
_NOT_IN_CONFIG = frozenset({"input", "output"})
_HINTS = typing.get_type_hints(Settings)
FIELDS = {f.name: f for f in fields(Settings)}


def default(name: str) -> Any:
    """A setting's default value."""
    f = FIELDS[name]
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise KeyError(name)


def _type_name(t: Any) -> str:
    if typing.get_origin(t) is Literal:
        return " or ".join(repr(c) for c in typing.get_args(t))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path"}
    if t in names:
        return names[t]
    origin = typing.get_origin(t)
    return {tuple: "a list of strings", dict: "a table"}.get(origin, str(t))


def _coerce(value: Any, t: Any) -> Any:
    """`value` as type `t`, or raise ValueError with what was expected."""
    origin = typing.get_origin(t)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0])
    if origin is Literal:
        if value in typing.get_args(t):
            return value
    elif t is bool:
        if isinstance(value, bool):
            return value
    elif t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif t is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif t is str:
        if isinstance(value, str):
            return value
    elif t is Path:
        if isinstance(value, str | Path):
            return Path(value).expanduser()
    elif origin is tuple:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif origin is dict and isinstance(value, dict):
        return value
    raise ValueError(_type_name(t))


def check_value(name: str, value: Any, where: str) -> Any:
    """A setting's value, checked and converted; `where` names it in the error
    (``--concurrency``, or ``llmbatch.toml: concurrency``)."""
    try:
        value = _coerce(value, _HINTS[name])
    except ValueError as exc:
        raise ConfigError(f"{where} must be {exc}, not {value!r}") from None
    bound = FIELDS[name].metadata
    if bound and value is not None:
        low, strict = bound["low"], bound["strict"]
        if value < low or (strict and value == low):
            raise ConfigError(
                f"{where} must be {'more than' if strict else 'at least'} {low:g}, not {value!r}"
            )
    return value


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def make_settings(*, flags: Mapping[str, Any], config: Mapping[str, Any], config_path: str = "") -> Settings:
    """Settings from the defaults, overridden by the config file's values, overridden by
    the flags given. Every value is checked (see `check_value`)."""
    values: dict[str, Any] = {}
    for name, value in config.items():
        values[name] = check_value(name, value, f"{config_path}: {name}")
    for name, value in flags.items():
        values[name] = check_value(name, value, flag_name(name))
    if "params" in config and "params" in flags:
        values["params"] = {**config["params"], **flags["params"]}
    for name in ("input", "output"):
        if name not in values:
            raise ConfigError(f"missing {name}")
    if values.get("service_tier") == FLEX:
        if values.get("batch_api"):
            raise ConfigError(
                "--service-tier flex is a live tier (synchronous, at the Batch API's price): "
                "it cannot go through --batch-api; choose one"
            )
        values.setdefault("timeout", FLEX_TIMEOUT)  # unless --timeout (or the file) says
    return Settings(**values)


def load_config(path: Path | None) -> tuple[dict[str, Any], str]:
    """The config file's settings as Settings field names (dashes become underscores),
    unchecked, and the file's name for messages."""
    if path is None:
        default_path = Path(CONFIG_NAME)
        if not default_path.is_file():
            return {}, ""
        path = default_path
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "prices":
            out["prices"] = _prices(value, path)
        elif name in FIELDS and name not in _NOT_IN_CONFIG:
            out[name] = value
        else:
            raise ConfigError(f"{path}: unknown setting {key!r}")
    return out, str(path)


def _prices(value: Any, path: Path) -> dict[str, tuple[float, float]]:
    try:
        return {m: (float(p["input"]), float(p["output"])) for m, p in value.items()}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise ConfigError(f"{path}: [prices.MODEL] needs numeric 'input' and 'output'") from None


def read_api_key(api_key_file: Path | None, env: str = "OPENAI_API_KEY") -> str | None:
    """The API key from --api-key-file, else the variable `env` (OPENAI_API_KEY;
    ANTHROPIC_API_KEY for --provider anthropic). Never echoed anywhere."""
    if api_key_file is not None:
        try:
            key = api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read API key file {api_key_file}: {exc.strerror}") from None
        if not key:
            raise ConfigError(f"API key file {api_key_file} is empty")
        return key
    return os.environ.get(env) or None
