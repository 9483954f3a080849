"""llmbatch: push JSONL rows through an OpenAI-compatible API, paced, validated, resumable."""

from llmbatch.errors import (
    AuthError,
    ConfigError,
    InputError,
    LLMBatchError,
    PermanentError,
    ProviderError,
    RateLimited,
    TransientError,
    ValidationFailed,
)
from llmbatch.providers.base import Completion, Provider, Request, Usage
from llmbatch.retry import BackoffStrategy, RetryConfig

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "BackoffStrategy",
    "Completion",
    "ConfigError",
    "InputError",
    "LLMBatchError",
    "PermanentError",
    "Provider",
    "ProviderError",
    "RateLimited",
    "Request",
    "RetryConfig",
    "TransientError",
    "Usage",
    "ValidationFailed",
    "__version__",
]
