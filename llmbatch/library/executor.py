"""Run a handful of LLM calls (and plain functions) concurrently from Python code.

The library face of llmbatch: the same providers, backoff policy and limiter as the
CLI, behind the ``ParallelLLMExecutor`` API::

    from llmbatch import LLMMessage, LLMTask, ParallelLLMExecutor
    from llmbatch.providers.openai import OpenAIProvider

    provider = OpenAIProvider(api_key="sk-...")
    executor = ParallelLLMExecutor(provider, max_concurrency=3, model="gpt-4o-mini", rpm=500)
    results = await executor.execute({
        "math": LLMTask(messages=[LLMMessage(role="user", content="Generate a math question")]),
        "history": LLMTask(messages=[LLMMessage(role="user", content="Generate a history question")]),
    })
    for tag, result in results.items():
        print(tag, result.value.content if result.success else f"FAILED - {result.error}")

Every task is isolated: its exception is caught into its `TaskResult`, and one failure
never cancels another. Retries follow the task's `RetryConfig` (else the executor's
default; with neither, one attempt) and retry only what can succeed on a second try:
our `TransientError` and `RateLimited` (after the server's requested delay), and
exceptions that are not llmbatch's own (a custom or scripted provider's
``RuntimeError``: we cannot tell, so we believe the policy). `PermanentError`,
`AuthError` and our other errors are never retried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from llmbatch.core.endpoints import CHAT, CHAT_ENDPOINT, DEFAULT_MESSAGES_MAX_TOKENS, MESSAGES
from llmbatch.core.errors import TransientError
from llmbatch.core.retry import RetryConfig
from llmbatch.core.values import Completion, Request, Usage
from llmbatch.modes.outcome import ErrorKind, kind_of
from llmbatch.providers.base import Provider
from llmbatch.schedule.limits import Limits

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "DeterministicTask",
    "LLMMessage",
    "LLMResponse",
    "LLMTask",
    "ParallelLLMExecutor",
    "TaskResult",
    "worth_retrying",
]

DEFAULT_MAX_CONCURRENCY = 5


@dataclass(frozen=True, slots=True)
class LLMMessage:
    """One chat message: `role` is "system", "user" or "assistant"."""

    role: str
    content: str

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True)
class LLMTask:
    """One LLM call.

    `config_overrides` are merged into the request body (``temperature``, ``model``,
    ``max_tokens``, ``response_format`` ...) over the executor's defaults. `retry`
    replaces the executor's `default_retry`. `timeout` (seconds) bounds the whole task,
    every attempt and backoff wait included, counted from its first attempt. `tag` is
    filled from the dict key by `execute`.
    """

    messages: Sequence[LLMMessage]
    config_overrides: Mapping[str, Any] | None = None
    retry: RetryConfig | None = None
    tag: str = ""
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class DeterministicTask:
    """A plain function to run alongside LLM calls: sync callables run in a thread,
    async ones are awaited. Its return value becomes `TaskResult.value`."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    tag: str = ""


@dataclass(frozen=True, slots=True)
class LLMResponse:
    """An LLM task's answer. `content` is the text ("" when the model answered without
    any, e.g. only tool calls); `completion` is the provider's full answer; `refusal`
    the model's refusal when it declined to answer (its `content` is then "")."""

    content: str
    model: str | None
    usage: Usage
    finish_reason: str | None
    completion: Completion
    refusal: str | None = None

    @classmethod
    def from_completion(cls, completion: Completion) -> LLMResponse:
        body = completion.body
        endpoint = completion.endpoint
        if (
            completion.choice is None
            if endpoint is CHAT_ENDPOINT
            else endpoint.unusable(body, None) is not None and completion.refusal is None
        ):
            # A 200 that is not an answer of its endpoint: an upstream hiccup, worth a retry.
            raise TransientError(f"the answer is not a chat completion: {str(body)[:200]}", code="malformed")
        model = body.get("model") if isinstance(body, dict) else None
        return cls(
            content=completion.text or "",
            model=model if isinstance(model, str) else None,
            usage=completion.usage,
            finish_reason=completion.finish_reason,
            completion=completion,
            refusal=completion.refusal,
        )


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What became of one task. `value` is an `LLMResponse` for LLM tasks, the return
    value for deterministic ones, None on failure; `error` is the exception that ended
    a failed task. `duration_ms` is wall-clock time from the task's first start (not
    its wait for a free slot) to its end."""

    tag: str
    success: bool
    value: Any = None
    error: Exception | None = None
    duration_ms: float = 0.0


Task = LLMTask | DeterministicTask
_T = TypeVar("_T", bound=LLMTask | DeterministicTask)


def worth_retrying(exc: BaseException) -> bool:
    """Whether another attempt might succeed (see the module docstring): the one
    classification of the engine's (`llmbatch.modes.outcome.kind_of`), where a foreign
    exception (a custom provider's own) is believed to be worth the task's policy."""
    return kind_of(exc) in (ErrorKind.TRANSIENT, ErrorKind.FOREIGN)


class _Clock:
    """When a task first got a slot: its duration and its timeout count from there."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started: float | None = None

    def start(self) -> bool:
        """Mark the start; True the first time only."""
        if self.started is None:
            self.started = time.perf_counter()
            return True
        return False

    def elapsed_ms(self) -> float:
        return 0.0 if self.started is None else (time.perf_counter() - self.started) * 1000


class ParallelLLMExecutor:
    """Runs LLM tasks and deterministic functions concurrently, each isolated.

    At most `max_concurrency` provider calls and functions run at once (one semaphore
    for all of this executor's work; a task waiting out a backoff holds no slot).
    `default_retry` applies to tasks without their own `retry`; without either a task
    gets one attempt. `default_config_overrides` go into every request body, under the
    task's own overrides. `model` is the request's model unless an override names one;
    with neither, the body carries no model and the provider decides (`EchoProvider`
    needs none, OpenAI refuses). `timeout` is the default for `LLMTask.timeout`.
    `rpm` / `tpm` pace requests through the CLI's `Limits` (and a 429 then slows the
    whole executor down, not just the task that got it).
    """

    def __init__(
        self,
        provider: Provider,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        default_retry: RetryConfig | None = None,
        default_config_overrides: Mapping[str, Any] | None = None,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        timeout: float | None = None,
        model: str | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        self.provider = provider
        self.max_concurrency = max_concurrency
        self.default_retry = default_retry
        self.default_config_overrides: dict[str, Any] = dict(default_config_overrides or {})
        self.rpm = rpm
        self.tpm = tpm
        self.timeout = timeout
        self.model = model
        # asyncio primitives belong to one event loop; an executor may outlive it (a
        # script calling asyncio.run twice), so these are made per loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = asyncio.Semaphore(max_concurrency)
        self._limits: Limits | None = None

    # --- public API ----------------------------------------------------------------

    async def execute(self, tasks: Mapping[str, LLMTask]) -> dict[str, TaskResult]:
        """Run LLM tasks concurrently; results by the same keys, in the same order."""
        return await self.execute_mixed(tasks)

    async def execute_mixed(self, tasks: Mapping[str, LLMTask | DeterministicTask]) -> dict[str, TaskResult]:
        """Run LLM and deterministic tasks concurrently, under the same concurrency cap."""
        tagged = {key: _tagged(_checked(task), key) for key, task in tasks.items()}
        self._bind()
        results = await asyncio.gather(*(self._run(task) for task in tagged.values()))
        return dict(zip(tagged, results, strict=True))

    async def execute_sequential(
        self, tasks: Sequence[LLMTask], pass_result: bool = False
    ) -> list[TaskResult]:
        """Run LLM tasks one after another; results in the same order.

        With `pass_result`, the latest successful answer so far is given to the next
        task as an assistant message, placed just before that task's last user message
        (so a chain reads: system prompt, previous answer, new instruction). A failed
        step passes nothing on; the step after it gets the last answer that succeeded.
        """
        self._bind()
        results: list[TaskResult] = []
        previous: str | None = None
        for task in tasks:
            task = _checked(task)
            if pass_result and previous is not None and isinstance(task, LLMTask):
                task = dataclasses.replace(task, messages=_with_previous(task.messages, previous))
            result = await self._run(task)
            results.append(result)
            if result.success and isinstance(result.value, LLMResponse):
                previous = result.value.content
        return results

    # --- one task --------------------------------------------------------------------

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._slots = asyncio.Semaphore(self.max_concurrency)
            self._limits = Limits(rpm=self.rpm, tpm=self.tpm) if self.rpm or self.tpm else None

    async def _run(self, task: Task) -> TaskResult:
        clock = _Clock()
        try:
            if isinstance(task, DeterministicTask):
                value = await self._call(task, clock)
            else:
                value = await self._ask(task, clock)
        except Exception as exc:
            return TaskResult(task.tag, False, None, exc, clock.elapsed_ms())
        return TaskResult(task.tag, True, value, None, clock.elapsed_ms())

    async def _call(self, task: DeterministicTask, clock: _Clock) -> Any:
        async with self._slots:
            clock.start()
            fn, args, kwargs = task.fn, task.args, task.kwargs
            if inspect.iscoroutinefunction(fn):
                return await fn(*args, **kwargs)
            value = await asyncio.to_thread(fn, *args, **kwargs)
            # A sync callable may hand back an awaitable (a lambda around a coroutine).
            return await value if inspect.isawaitable(value) else value

    async def _ask(self, task: LLMTask, clock: _Clock) -> LLMResponse:
        limit = task.timeout if task.timeout is not None else self.timeout
        deadline = asyncio.timeout(None)
        try:
            async with deadline:
                return await self._attempts(task, clock, deadline, limit)
        except TimeoutError:
            if deadline.expired():
                raise TransientError(
                    f"task {task.tag!r} did not finish within {limit:g}s", code="timeout"
                ) from None
            raise

    async def _attempts(
        self, task: LLMTask, clock: _Clock, deadline: asyncio.Timeout, limit: float | None
    ) -> LLMResponse:
        """Attempt after attempt, a slot each, waiting as the policy says in between."""
        config = task.retry or self.default_retry
        policy = config.policy() if config else None
        request = self._request(task)
        loop = asyncio.get_running_loop()
        attempt, last_delay = 0, 0.0
        while True:
            attempt += 1
            async with self._slots:
                if clock.start() and limit is not None:
                    deadline.reschedule(loop.time() + limit)
                when = deadline.when()
                try:
                    return await self._attempt(
                        request, None if when is None else max(when - loop.time(), 0.001)
                    )
                except Exception as exc:
                    if policy is None or not policy.allows(attempt - 1) or not worth_retrying(exc):
                        raise
                    last_delay = policy.wait(exc, attempt, last_delay).seconds
            await asyncio.sleep(last_delay)

    def _request(self, task: LLMTask) -> Request:
        body: dict[str, Any] = {"model": self.model} if self.model else {}
        body.update(self.default_config_overrides)
        body.update(task.config_overrides or {})
        # A provider that speaks another endpoint says so (AnthropicProvider: Messages).
        url = getattr(self.provider, "endpoint", CHAT)
        if url == MESSAGES:  # the system prompt is a field of its own; max_tokens is required
            system = [m.content for m in task.messages if m.role == "system"]
            if system:
                body.setdefault("system", "\n\n".join(system))
            body["messages"] = [m.as_dict() for m in task.messages if m.role != "system"]
            body.setdefault("max_tokens", DEFAULT_MESSAGES_MAX_TOKENS)
            return Request(custom_id=task.tag, body=body, url=url)
        body["messages"] = [m.as_dict() for m in task.messages]
        return Request(custom_id=task.tag, body=body)

    async def _attempt(self, request: Request, timeout: float | None) -> LLMResponse:
        limits = self._limits
        if limits is None:
            completion = await self.provider.complete(request, timeout=timeout)
            return LLMResponse.from_completion(completion)
        permit = await limits.admit(request)
        try:
            completion = await self.provider.complete(request, timeout=timeout)
        except BaseException as exc:
            permit.settle(exc)
            raise
        permit.settle(completion)
        return LLMResponse.from_completion(completion)


def _checked(task: _T) -> _T:
    if not isinstance(task, LLMTask | DeterministicTask):
        raise TypeError(f"expected an LLMTask or DeterministicTask, got {type(task).__name__}")
    return task


def _tagged(task: _T, tag: str) -> _T:
    return task if task.tag == tag else dataclasses.replace(task, tag=tag)


def _with_previous(messages: Sequence[LLMMessage], answer: str) -> list[LLMMessage]:
    """`messages` with `answer` as an assistant message before the last user message."""
    out = list(messages)
    at = next((i for i in range(len(out) - 1, -1, -1) if out[i].role == "user"), len(out))
    out.insert(at, LLMMessage(role="assistant", content=answer))
    return out
