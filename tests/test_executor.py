"""The library face: ParallelLLMExecutor as its documentation (the seed) describes it,
on the same providers, backoff policy and limiter as the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from llmbatch import (
    AuthError,
    BackoffStrategy,
    Completion,
    DeterministicTask,
    EchoProvider,
    LLMMessage,
    LLMResponse,
    LLMTask,
    ParallelLLMExecutor,
    PermanentError,
    RateLimited,
    Request,
    RetryConfig,
    TaskResult,
    TransientError,
)
from llmbatch.providers.openai import OpenAIProvider
from llmbatch.testing import ErrorResponse, text_response


def user(text: str) -> list[LLMMessage]:
    return [LLMMessage(role="user", content=text)]


class Scripted:
    """A provider whose behaviour is set per task tag: the first answers of a tag may be
    exceptions, a tag may be slow; it counts calls and the peak of calls in flight."""

    def __init__(
        self,
        fail: dict[str, list[BaseException]] | None = None,
        delay: float | dict[str, float] = 0.0,
    ) -> None:
        self.fail = {tag: list(errs) for tag, errs in (fail or {}).items()}
        self.delay = delay
        self.calls: Counter[str] = Counter()
        self.in_flight = 0
        self.peak = 0

    async def complete(self, request: Request, *, timeout: float | None = None) -> Completion:
        tag = request.custom_id
        self.calls[tag] += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            delay = self.delay if isinstance(self.delay, float) else self.delay.get(tag, 0.0)
            await asyncio.sleep(delay)
            errors = self.fail.get(tag)
            if errors:
                raise errors.pop(0)
            return text_response(f"answer to {tag}")
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        return None


# --- the seed's examples, with only the imports changed --------------------------------


async def test_doc_overview(capsys: pytest.CaptureFixture[str]) -> None:
    """The overview example runs three tasks and prints each answer by its tag."""
    provider = EchoProvider()
    executor = ParallelLLMExecutor(provider, max_concurrency=3)

    results = await executor.execute(
        {
            "q1": LLMTask(messages=[LLMMessage(role="user", content="Generate a math question")]),
            "q2": LLMTask(messages=[LLMMessage(role="user", content="Generate a science question")]),
            "q3": LLMTask(messages=[LLMMessage(role="user", content="Generate a history question")]),
        }
    )

    for tag, result in results.items():
        if result.success:
            print(f"{tag}: {result.value.content}")
        else:
            print(f"{tag}: FAILED - {result.error}")

    assert capsys.readouterr().out.splitlines() == [
        "q1: Generate a math question",
        "q2: Generate a science question",
        "q3: Generate a history question",
    ]


async def test_doc_creating_an_executor(no_backoff: None) -> None:
    """The documented constructor keywords are accepted and kept; the default policy
    retries a task that fails twice."""
    llm_provider = Scripted(fail={"t": [TransientError("503"), TransientError("503")]})
    executor = ParallelLLMExecutor(
        provider=llm_provider,  # Any AsyncLLMProvider
        max_concurrency=5,  # Semaphore limit
        default_retry=RetryConfig(  # Optional default retry policy
            max_attempts=3,
            backoff_strategy=BackoffStrategy.EXPONENTIAL,
        ),
    )
    assert executor.max_concurrency == 5
    results = await executor.execute({"t": LLMTask(messages=user("hi"))})
    assert results["t"].success
    assert llm_provider.calls["t"] == 3


async def test_doc_execute() -> None:
    """execute() maps tag to task and returns a TaskResult per tag, tag filled in."""
    executor = ParallelLLMExecutor(EchoProvider())
    results = await executor.execute(
        {
            "stem": LLMTask(messages=[LLMMessage(role="user", content="Generate a question stem")]),
            "distractors": LLMTask(messages=[LLMMessage(role="user", content="Generate distractors")]),
        }
    )
    assert list(results) == ["stem", "distractors"]
    assert all(isinstance(r, TaskResult) for r in results.values())
    assert results["stem"].tag == "stem"
    assert results["distractors"].value.content == "Generate distractors"


def fetch_reference_data(topic: str) -> dict[str, str]:
    return {"topic": topic, "source": "textbook"}


async def test_doc_execute_mixed() -> None:
    """execute_mixed() runs an LLM task, a lambda and a function with args together."""
    executor = ParallelLLMExecutor(EchoProvider())
    results = await executor.execute_mixed(
        {
            "question": LLMTask(
                messages=[LLMMessage(role="user", content="Generate a question")],
            ),
            "timestamp": DeterministicTask(
                fn=lambda: datetime.now().isoformat(),
            ),
            "lookup": DeterministicTask(
                fn=fetch_reference_data,
                args=("biology",),
            ),
        }
    )
    assert results["question"].value.content == "Generate a question"
    assert datetime.fromisoformat(results["timestamp"].value)
    assert results["lookup"].value == {"topic": "biology", "source": "textbook"}
    assert results["lookup"].tag == "lookup"


async def test_doc_execute_sequential() -> None:
    """execute_sequential(pass_result=True) gives the second step the first's answer."""
    provider = EchoProvider()
    provider.set_responses([text_response("What is 2 + 2?"), text_response("What is 2 + 2, in base 3?")])
    executor = ParallelLLMExecutor(provider)
    results = await executor.execute_sequential(
        tasks=[
            LLMTask(
                messages=[LLMMessage(role="user", content="Generate a question")],
                tag="generate",
            ),
            LLMTask(
                messages=[LLMMessage(role="user", content="Now improve this question")],
                tag="improve",
            ),
        ],
        pass_result=True,  # Appends previous response as assistant message
    )
    assert [r.tag for r in results] == ["generate", "improve"]
    assert [r.value.content for r in results] == ["What is 2 + 2?", "What is 2 + 2, in base 3?"]
    assert provider.requests[1].body["messages"] == [
        {"role": "assistant", "content": "What is 2 + 2?"},
        {"role": "user", "content": "Now improve this question"},
    ]


async def test_doc_llm_task() -> None:
    """An LLMTask with a system prompt, overrides, retry and tag sends all of them."""
    task = LLMTask(
        messages=[
            LLMMessage(role="system", content="You are a quiz generator."),
            LLMMessage(role="user", content="Generate a biology question."),
        ],
        config_overrides={"temperature": 0.9},  # Per-task provider overrides
        retry=RetryConfig(max_attempts=2),  # Per-task retry policy
        tag="bio_q1",  # Auto-set from dict key in execute()
    )
    provider = EchoProvider()
    results = await ParallelLLMExecutor(provider).execute({"bio": task})
    assert results["bio"].tag == "bio"
    assert task.tag == "bio_q1"  # the user's task is left as it was
    body = provider.requests[0].body
    assert body["temperature"] == 0.9
    assert body["messages"][0] == {"role": "system", "content": "You are a quiz generator."}
    assert provider.requests[0].custom_id == "bio"


def compute_hash(content: str, algorithm: str = "md5") -> str:
    return hashlib.new(algorithm, content.encode()).hexdigest()


async def fetch_from_database(record_id: str) -> dict[str, str]:
    await asyncio.sleep(0)
    return {"id": record_id}


async def test_doc_deterministic_task() -> None:
    """Sync and async DeterministicTasks return their functions' values."""
    executor = ParallelLLMExecutor(EchoProvider())
    sync_task = DeterministicTask(
        fn=compute_hash,
        args=("content",),
        kwargs={"algorithm": "sha256"},
    )
    async_task = DeterministicTask(
        fn=fetch_from_database,
        args=("record_123",),
    )
    results = await executor.execute_mixed({"hash": sync_task, "record": async_task})
    assert results["hash"].value == hashlib.sha256(b"content").hexdigest()
    assert results["record"].value == {"id": "record_123"}


async def test_doc_task_result(capsys: pytest.CaptureFixture[str]) -> None:
    """A successful LLM result carries an LLMResponse and a duration in milliseconds."""
    provider = EchoProvider(latency_ms=20)
    results = await ParallelLLMExecutor(provider).execute({"q1": LLMTask(messages=user("hello"))})
    result = results["q1"]

    if result.success:
        response = result.value  # LLMResponse for LLM tasks, Any for deterministic
        print(f"Completed in {result.duration_ms:.1f}ms")
    else:
        print(f"Failed: {result.error}")

    assert isinstance(response, LLMResponse)
    assert response.content == "hello"
    assert 15 <= result.duration_ms < 1000
    assert capsys.readouterr().out.startswith("Completed in ")


async def test_doc_error_handling() -> None:
    """A failing task is reported as failed; its neighbour is unaffected."""
    provider = EchoProvider()
    provider.set_responses([text_response("Hi!"), ErrorResponse(RuntimeError("trigger error"))])
    executor = ParallelLLMExecutor(provider)
    results = await executor.execute(
        {
            "good": LLMTask(messages=[LLMMessage(role="user", content="Hello")]),
            "bad": LLMTask(messages=[LLMMessage(role="user", content="trigger error")]),
        }
    )

    assert results["good"].success is True  # Unaffected by other failures
    assert results["bad"].success is False
    assert results["bad"].error is not None

    assert results["good"].value.content == "Hi!"
    assert results["bad"].value is None
    assert isinstance(results["bad"].error, RuntimeError)


async def test_doc_retry(no_backoff: None) -> None:
    """The critical task gets its own five attempts; best_effort gets exactly one."""
    provider = Scripted(
        fail={
            "critical": [TransientError("503")] * 4,
            "best_effort": [TransientError("503")],
        }
    )
    # Executor-level default
    executor = ParallelLLMExecutor(
        provider=provider,
        default_retry=RetryConfig(max_attempts=3),
    )

    # Per-task override
    results = await executor.execute(
        {
            "critical": LLMTask(
                messages=[LLMMessage(role="user", content="Important task")],
                retry=RetryConfig(
                    max_attempts=5,
                    backoff_strategy=BackoffStrategy.EXPONENTIAL,
                    initial_delay=1.0,
                ),
            ),
            "best_effort": LLMTask(
                messages=[LLMMessage(role="user", content="Optional task")],
                retry=RetryConfig(max_attempts=1),  # No retry
            ),
        }
    )
    assert results["critical"].success
    assert provider.calls == {"critical": 5, "best_effort": 1}
    assert not results["best_effort"].success


async def test_doc_testing_with_echo_provider() -> None:
    """Scripted responses are handed out in the order the tasks were given."""
    provider = EchoProvider()
    provider.set_responses(
        [
            text_response("Math question"),
            text_response("Science question"),
        ]
    )

    executor = ParallelLLMExecutor(provider, max_concurrency=2)
    results = await executor.execute(
        {
            "math": LLMTask(messages=[LLMMessage(role="user", content="math")]),
            "science": LLMTask(messages=[LLMMessage(role="user", content="science")]),
        }
    )

    assert results["math"].success
    assert results["science"].success
    assert results["math"].value.content == "Math question"
    assert results["science"].value.content == "Science question"


async def test_a_refusal_is_told_on_the_response() -> None:
    """A model that declines: the task succeeds (the executor judges no answers), with
    empty content and the refusal on `LLMResponse.refusal`; a plain answer has none."""
    declined = text_response("")
    declined.body["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": "No."}
    provider = EchoProvider()
    provider.set_responses([declined, text_response("Sure")])
    executor = ParallelLLMExecutor(provider, max_concurrency=1)
    first, second = await executor.execute_sequential(
        [LLMTask(messages=[LLMMessage(role="user", content=q)]) for q in ("a", "b")]
    )
    assert (first.success, first.value.content, first.value.refusal) == (True, "", "No.")
    assert (second.value.content, second.value.refusal) == ("Sure", None)


async def test_doc_testing_error_handling() -> None:
    """ErrorResponse makes the task that takes it fail with that exception."""
    provider = EchoProvider()
    provider.set_responses(
        [
            text_response("OK"),
            ErrorResponse(RuntimeError("simulated failure")),
        ]
    )
    results = await ParallelLLMExecutor(provider).execute(
        {"a": LLMTask(messages=user("one")), "b": LLMTask(messages=user("two"))}
    )
    assert results["a"].value.content == "OK"
    assert str(results["b"].error) == "simulated failure"


def test_doc_imports() -> None:
    """All main types come from the top-level package."""
    import llmbatch
    from llmbatch import (
        DeterministicTask,
        LLMMessage,
        LLMTask,
        ParallelLLMExecutor,
        TaskResult,
    )

    for obj in (ParallelLLMExecutor, LLMTask, DeterministicTask, TaskResult, LLMMessage):
        assert obj.__name__ in llmbatch.__all__


# --- behaviour beyond the examples ------------------------------------------------------


async def test_failures_are_isolated() -> None:
    """A provider exception, a permanent error and a raising function each fail only
    their own task; every other task still succeeds."""

    def broken() -> None:
        raise ValueError("bad input")

    provider = Scripted(fail={"p": [PermanentError("HTTP 400: nope")], "x": [KeyError("boom")]})
    executor = ParallelLLMExecutor(provider, max_concurrency=2)
    tasks: dict[str, LLMTask | DeterministicTask] = {
        f"ok{i}": LLMTask(messages=user(str(i))) for i in range(6)
    }
    tasks |= {
        "p": LLMTask(messages=user("p")),
        "x": LLMTask(messages=user("x")),
        "f": DeterministicTask(broken),
    }
    results = await executor.execute_mixed(tasks)
    assert [t for t, r in results.items() if not r.success] == ["p", "x", "f"]
    assert isinstance(results["p"].error, PermanentError)
    assert isinstance(results["f"].error, ValueError)
    assert all(results[f"ok{i}"].value.content == f"answer to ok{i}" for i in range(6))


async def test_concurrency_cap_covers_llm_and_deterministic_tasks() -> None:
    """No more than max_concurrency calls and functions run at once, and the cap is reached."""
    provider = Scripted(delay=0.02)
    running = 0
    peak = 0

    async def busy() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running + provider.in_flight)
        await asyncio.sleep(0.02)
        running -= 1

    tasks: dict[str, LLMTask | DeterministicTask] = {}
    for i in range(20):
        tasks[f"l{i}"] = LLMTask(messages=user(str(i)))
        tasks[f"d{i}"] = DeterministicTask(busy)
    results = await ParallelLLMExecutor(provider, max_concurrency=3).execute_mixed(tasks)
    assert all(r.success for r in results.values())
    assert provider.peak <= 3
    assert peak <= 3
    assert max(provider.peak, peak) == 3


async def test_config_overrides_precedence() -> None:
    """Task overrides beat executor defaults, which beat the executor's model."""
    provider = EchoProvider()
    executor = ParallelLLMExecutor(
        provider,
        default_config_overrides={"temperature": 0.1, "max_tokens": 5, "model": "m-default"},
        model="m-executor",
    )
    await executor.execute_sequential(
        [
            LLMTask(messages=user("a"), config_overrides={"temperature": 0.9, "model": "m-task"}),
            LLMTask(messages=user("b")),
        ]
    )
    first, second = (r.body for r in provider.requests)
    assert first == {"model": "m-task", "temperature": 0.9, "max_tokens": 5, "messages": user_dicts("a")}
    assert second["model"] == "m-default" and second["temperature"] == 0.1

    plain = EchoProvider()
    await ParallelLLMExecutor(plain, model="m-executor").execute({"t": LLMTask(messages=user("c"))})
    await ParallelLLMExecutor(plain).execute({"t": LLMTask(messages=user("c"))})
    assert plain.requests[0].body["model"] == "m-executor"
    assert "model" not in plain.requests[1].body


def user_dicts(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_retry_policy_per_task_beats_default_and_none_means_one_attempt(no_backoff: None) -> None:
    """Without any RetryConfig a task gets one attempt; the default gives three; a task's
    own policy replaces the default."""
    always = [TransientError("503")] * 10
    provider = Scripted(fail={"none": list(always)})
    await ParallelLLMExecutor(provider).execute({"none": LLMTask(messages=user("x"))})
    assert provider.calls["none"] == 1

    provider = Scripted(fail={"default": list(always), "own": list(always)})
    executor = ParallelLLMExecutor(provider, default_retry=RetryConfig(max_attempts=3))
    results = await executor.execute(
        {
            "default": LLMTask(messages=user("x")),
            "own": LLMTask(messages=user("x"), retry=RetryConfig(max_attempts=6)),
        }
    )
    assert provider.calls == {"default": 3, "own": 6}
    assert isinstance(results["own"].error, TransientError)


async def test_only_retryable_errors_are_retried(no_backoff: None) -> None:
    """Permanent and auth errors fail at once; scripted plain exceptions are retried."""
    provider = Scripted(
        fail={
            "perm": [PermanentError("HTTP 400")] * 3,
            "auth": [AuthError("HTTP 401")] * 3,
            "plain": [RuntimeError("flaky")] * 2,
        }
    )
    executor = ParallelLLMExecutor(provider, default_retry=RetryConfig(max_attempts=3))
    results = await executor.execute({t: LLMTask(messages=user(t)) for t in ("perm", "auth", "plain")})
    assert provider.calls == {"perm": 1, "auth": 1, "plain": 3}
    assert results["plain"].success and not results["perm"].success and not results["auth"].success


async def test_rate_limited_waits_the_servers_delay(no_backoff: None) -> None:
    """A 429's retry_after is honoured even when backoff is zero."""
    provider = Scripted(fail={"t": [RateLimited("HTTP 429", retry_after=0.15)]})
    executor = ParallelLLMExecutor(provider, default_retry=RetryConfig(max_attempts=2))
    started = time.perf_counter()
    results = await executor.execute({"t": LLMTask(messages=user("x"))})
    assert results["t"].success
    assert time.perf_counter() - started >= 0.15


async def test_backoff_comes_from_the_retry_config() -> None:
    """Waits between attempts follow RetryConfig.delay (LINEAR: 1x, then 2x initial)."""
    provider = Scripted(fail={"t": [TransientError("503")] * 2})
    retry = RetryConfig(max_attempts=3, backoff_strategy=BackoffStrategy.LINEAR, initial_delay=0.05)
    started = time.perf_counter()
    results = await ParallelLLMExecutor(provider).execute({"t": LLMTask(messages=user("x"), retry=retry)})
    elapsed = time.perf_counter() - started
    assert results["t"].success
    assert 0.15 <= elapsed < 1.0


async def test_task_timeout_in_a_sequential_chain(no_backoff: None) -> None:
    """A slow step fails with a timeout after its own limit (all its attempts
    included); the chain goes on and the next step gets the last good answer."""
    provider = Scripted(delay={"slow": 5.0})
    executor = ParallelLLMExecutor(provider, default_retry=RetryConfig(max_attempts=5))
    started = time.perf_counter()
    results = await executor.execute_sequential(
        [
            LLMTask(messages=user("first"), tag="first"),
            LLMTask(messages=user("second"), tag="slow", timeout=0.1),
            LLMTask(messages=user("third"), tag="third"),
        ],
        pass_result=True,
    )
    assert time.perf_counter() - started < 2.0
    assert [r.success for r in results] == [True, False, True]
    err = results[1].error
    assert isinstance(err, TransientError) and err.code == "timeout"
    assert 90 <= results[1].duration_ms < 1000


async def test_executor_timeout_bounds_every_retry(no_backoff: None) -> None:
    """The executor-wide timeout ends a task whose attempts keep failing slowly."""
    provider = Scripted(fail={"t": [TransientError("503")] * 100}, delay=0.03)
    executor = ParallelLLMExecutor(provider, default_retry=RetryConfig(max_attempts=100), timeout=0.2)
    results = await executor.execute({"t": LLMTask(messages=user("x"))})
    assert isinstance(results["t"].error, TransientError)
    assert results["t"].error.code == "timeout"
    assert 3 <= provider.calls["t"] <= 8


async def test_pass_result_keeps_system_first_and_instruction_last() -> None:
    """The previous answer goes after the system prompt and before the new instruction."""
    provider = EchoProvider()
    provider.set_responses(["draft answer"])
    system = LLMMessage(role="system", content="You edit questions.")
    await ParallelLLMExecutor(provider).execute_sequential(
        [
            LLMTask(messages=[system, LLMMessage(role="user", content="Write a question")]),
            LLMTask(messages=[system, LLMMessage(role="user", content="Improve it")]),
        ],
        pass_result=True,
    )
    assert provider.requests[1].body["messages"] == [
        {"role": "system", "content": "You edit questions."},
        {"role": "assistant", "content": "draft answer"},
        {"role": "user", "content": "Improve it"},
    ]
    assert len(provider.requests[0].body["messages"]) == 2


async def test_sequential_without_pass_result_sends_tasks_unchanged() -> None:
    """pass_result=False runs the steps in order with only their own messages."""
    provider = EchoProvider()
    results = await ParallelLLMExecutor(provider).execute_sequential(
        [LLMTask(messages=user("a")), LLMTask(messages=user("b"))]
    )
    assert [r.value.content for r in results] == ["a", "b"]
    assert provider.requests[1].body["messages"] == user_dicts("b")


async def test_deterministic_sync_runs_in_a_thread_async_in_the_loop() -> None:
    """A sync function runs off the event loop's thread; an async one is awaited on it."""
    loop_thread = threading.get_ident()

    def sync_fn() -> int:
        return threading.get_ident()

    async def async_fn() -> int:
        await asyncio.sleep(0)
        return threading.get_ident()

    results = await ParallelLLMExecutor(EchoProvider()).execute_mixed(
        {"sync": DeterministicTask(sync_fn), "async": DeterministicTask(async_fn)}
    )
    assert results["sync"].value != loop_thread
    assert results["async"].value == loop_thread


def test_one_executor_serves_two_event_loops() -> None:
    """An executor made once can be used from two asyncio.run calls."""
    executor = ParallelLLMExecutor(EchoProvider(latency_ms=5), max_concurrency=2)
    tasks = {str(i): LLMTask(messages=user(str(i))) for i in range(6)}
    for _ in range(2):
        results = asyncio.run(executor.execute(tasks))
        assert all(r.success for r in results.values())


async def test_non_tasks_are_refused() -> None:
    """Passing something that is not a task is a programming error, raised at once."""
    with pytest.raises(TypeError, match="LLMTask"):
        await ParallelLLMExecutor(EchoProvider()).execute({"x": "hello"})  # type: ignore[dict-item]


# --- over real HTTP, through the CLI's provider and limiter -----------------------------


async def test_thousand_tasks_through_the_fake_server(fake_server: Callable[..., Any]) -> None:
    """1,000 tasks at max_concurrency=50 all succeed over loopback HTTP, and the server
    never sees more than 50 requests at once (but does see close to 50)."""
    server = fake_server(latency_ms=50)
    provider = OpenAIProvider(api_key="sk-test", base_url=server.base_url, concurrency=64)
    try:
        executor = ParallelLLMExecutor(provider, max_concurrency=50, model="fake-model")
        tasks = {f"t{i}": LLMTask(messages=user(f"question {i}")) for i in range(1000)}
        results = await executor.execute(tasks)
    finally:
        await provider.aclose()
    assert all(r.success for r in results.values())
    assert results["t7"].value.content == "echo: question 7"
    assert results["t7"].value.model == "fake-model"
    assert 40 <= server.stats.max_in_flight <= 50


async def test_rpm_paces_requests(fake_server: Callable[..., Any]) -> None:
    """With rpm set, requests wait on the CLI's limiter: 1200/min is a burst of 20, then
    20 a second, so 30 requests take at least half a second."""
    server = fake_server()
    provider = OpenAIProvider(api_key="sk-test", base_url=server.base_url)
    try:
        executor = ParallelLLMExecutor(provider, max_concurrency=50, rpm=1200, tpm=10**6)
        started = time.perf_counter()
        results = await executor.execute({str(i): LLMTask(messages=user(str(i))) for i in range(30)})
        elapsed = time.perf_counter() - started
    finally:
        await provider.aclose()
    assert all(r.success for r in results.values())
    assert 0.4 <= elapsed < 5


async def test_server_429s_are_retried_after_its_delay(
    fake_server: Callable[..., Any], no_backoff: None
) -> None:
    """A server enforcing 600/min answers a burst of 20 with 429s; the executor waits
    the delay the server asks for and every task succeeds."""
    server = fake_server(rpm=600)
    provider = OpenAIProvider(api_key="sk-test", base_url=server.base_url)
    try:
        executor = ParallelLLMExecutor(
            provider, max_concurrency=20, default_retry=RetryConfig(max_attempts=20)
        )
        results = await executor.execute({str(i): LLMTask(messages=user(str(i))) for i in range(20)})
    finally:
        await provider.aclose()
    assert all(r.success for r in results.values())
    assert server.stats.rate_limited > 0
