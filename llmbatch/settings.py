"""Everything a run needs to know, frozen, with named defaults; and the config file.

Flags override the config file (``llmbatch.toml`` in the working directory, or
``--config FILE``), which overrides the defaults here. The file holds what a cron job
repeats: ``model``, ``rpm``, ``tpm``, ``concurrency``, ``validate``, ``prices`` ...
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from llmbatch.errors import ConfigError

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_REQUESTS",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "Settings",
    "load_config",
    "read_api_key",
]

DEFAULT_CONCURRENCY = 64
DEFAULT_MAX_REQUESTS = 4
DEFAULT_MAX_RETRIES = 10
DEFAULT_TIMEOUT = 120.0
DEFAULT_PROGRESS_EVERY = 10.0
CONFIG_NAME = "llmbatch.toml"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    input: Path
    output: Path
    provider: Literal["openai", "fake"] = "openai"
    base_url: str | None = None
    api_key_file: Path | None = None
    model: str | None = None
    prompt: str | None = None
    system: str | None = None
    id_field: str | None = None
    endpoint: str = "/v1/chat/completions"
    params: dict[str, Any] = field(default_factory=dict)
    concurrency: int = DEFAULT_CONCURRENCY
    rpm: float | None = None
    tpm: float | None = None
    timeout: float | None = DEFAULT_TIMEOUT
    max_requests: int = DEFAULT_MAX_REQUESTS
    max_retries: int = DEFAULT_MAX_RETRIES
    validate: tuple[str, ...] = ()
    schema: Path | None = None  # structured outputs + a schema validator, in one flag
    require_finish: str | None = None
    output_format: Literal["batch", "merged"] = "batch"
    rejects: Path | None = None
    fresh: bool = False
    number_duplicates: bool = False
    transport: Literal["fast", "sdk"] = "fast"
    fake_latency_ms: float = 40.0
    live: bool = True
    quiet: bool = False
    progress_every: float = DEFAULT_PROGRESS_EVERY
    summary_json: Path | None = None
    price_in: float | None = None
    price_out: float | None = None
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def rejects_path(self) -> Path:
        return self.rejects or self.output.with_name(self.output.name + ".rejects.jsonl")


def load_config(path: Path | None) -> dict[str, Any]:
    """The config file's settings as Settings field names (dashes become underscores)."""
    if path is None:
        default = Path(CONFIG_NAME)
        if not default.is_file():
            return {}
        path = default
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    known = {f.name for f in fields(Settings)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "prices" and isinstance(value, dict):
            try:
                out["prices"] = {m: (float(p["input"]), float(p["output"])) for m, p in value.items()}
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"{path}: [prices.MODEL] needs numeric 'input' and 'output'") from None
        elif name in known and name not in ("input", "output"):
            out[name] = tuple(value) if name == "validate" else value
        else:
            raise ConfigError(f"{path}: unknown setting {key!r}")
    return out


def read_api_key(api_key_file: Path | None) -> str | None:
    """The API key from --api-key-file, else OPENAI_API_KEY. Never echoed anywhere."""
    if api_key_file is not None:
        try:
            key = api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read API key file {api_key_file}: {exc.strerror}") from None
        if not key:
            raise ConfigError(f"API key file {api_key_file} is empty")
        return key
    return os.environ.get("OPENAI_API_KEY") or None
