"""llmbatch: push JSONL rows through an OpenAI-compatible API, paced, validated, resumable."""

from llmbatch.core.errors import (
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
from llmbatch.core.retry import BackoffStrategy, RetryConfig
from llmbatch.core.values import Completion, Request, Usage
from llmbatch.library.executor import (
    DeterministicTask,
    LLMMessage,
    LLMResponse,
    LLMTask,
    ParallelLLMExecutor,
    TaskResult,
)
from llmbatch.providers.base import Provider
from llmbatch.providers.echo import EchoProvider

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "BackoffStrategy",
    "Completion",
    "ConfigError",
    "DeterministicTask",
    "EchoProvider",
    "InputError",
    "LLMBatchError",
    "LLMMessage",
    "LLMResponse",
    "LLMTask",
    "ParallelLLMExecutor",
    "PermanentError",
    "Provider",
    "ProviderError",
    "RateLimited",
    "Request",
    "RetryConfig",
    "TaskResult",
    "TransientError",
    "Usage",
    "ValidationFailed",
    "__version__",
]
