"""Benchmarks under pressure (issue 15): a drained bucket, told the limit or not, for
requests and for tokens; a token limit learned from headers; a request bigger than a
minute of --tpm; and the marginal CPU per request against a lean bare client."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

import orjson

from bench.harness import Server

if TYPE_CHECKING:
    from bench.scenarios import Context, Row, Run

__all__ = ["budget", "cpu", "drained", "oversized", "tokens_learned"]

# A server whose budget another client just spent, and whose reset header means what
# OpenAI's does: the time until the bucket is full again (a minute, here).
DRAINED = ("--bucket-seconds", "60", "--start-spent", "--reset-means", "full")


def _ratio(run: Run, ideal: float) -> float:
    return run.run_s / ideal if ideal else float("nan")


def _beyond(beyond: int, n: int) -> str:
    return f"{beyond / n:.1%} of N beyond the first burst"


def drained(ctx: Context) -> list[Row]:
    """R requests/min with the bucket spent before the run: within 1.15x of N/R, told
    the limit or not, with at most 2% 429s beyond the first burst's; the same for a
    binding token limit."""
    rpm, n = 1200, ctx.sizes.drained_n
    ideal = n / rpm * 60
    inp = ctx.input("chat", n)
    rows = []
    for label, args, burst in (
        (f"llmbatch --rpm {rpm}", ("--rpm", str(rpm)), rpm // 60),
        ("llmbatch, not told the limit", (), 64),
    ):
        ctx.log(f"drained bucket, requests: {label}")
        with Server(rpm=rpm, extra=DRAINED) as server:
            run = ctx.run("llmbatch", inp, n, server=server, args=args, timeout=120 + ideal * 4)
        rows.append(_drained_row(run, f"drained bucket, {rpm:,} req/min", label, ideal, "N/R", burst))

    tpm, max_tokens = 40_000, 16
    inp = ctx.input("chat", n, max_tokens=max_tokens)
    for label, args, burst in (
        (f"llmbatch --tpm {tpm}", ("--tpm", str(tpm)), 3),
        ("llmbatch, not told the limit", (), 64),
    ):
        ctx.log(f"drained bucket, tokens: {label}")
        with Server(extra=("--tpm", str(tpm), *DRAINED)) as server:
            run = ctx.run("llmbatch", inp, n, server=server, args=args, timeout=300)
        charged = int(run.server.get("prompt_tokens", 0)) + n * max_tokens  # what the server counts
        ideal_t = charged / tpm * 60
        rows.append(
            _drained_row(run, f"drained bucket, {tpm:,} tok/min", label, ideal_t, "tokens/TPM", burst)
        )
    return rows


def _drained_row(run: Run, scenario: str, label: str, ideal: float, what: str, burst: int) -> Row:
    """Judged by the issue's target: within 1.15x of the ideal, and at most 2% 429s beyond
    the first burst's (requests sent before any answer could say the bucket was spent)."""
    row = run.row(scenario, label)
    beyond = max(0, (run.http_429 or 0) - burst)
    ratio = _ratio(run, ideal)
    row.result = f"{ratio:.3f}× {what} {ideal:.0f}s; 429s {run.http_429}, {_beyond(beyond, run.n)}"
    row.target = "≤ 1.15×, ≤ 2% 429s beyond the first burst"
    row.met = ratio <= 1.15 and beyond <= 0.02 * run.n
    return row


def budget(ctx: Context) -> list[Row]:
    """The budget a server offers (issue 28): a full bucket of 240/min, 300 requests,
    told the limit or not (within 1.3x of 15 s: 240 at once, 60 at 4/s); a server
    announcing 12,000/min but enforcing it per second, 3,000 requests (within 1.1x of
    N/R); a LiteLLM-style key limit of 120 a fixed minute, 300 requests untold (within
    1.2x of the windows' minimum, 120 s). At most 2% 429s each."""
    rows = []
    n = 300
    inp = ctx.input("chat", n)
    for label, args in (("llmbatch --rpm 240", ("--rpm", "240")), ("llmbatch, not told the limit", ())):
        ctx.log(f"full bucket 240/min: {label}")
        with Server(rpm=240, extra=("--bucket-seconds", "60")) as server:
            run = ctx.run("llmbatch", inp, n, server=server, args=args, timeout=120)
        rows.append(_budget_row(run, "full bucket, 240 req/min", label, 15.0, 1.3))

    n_win = 3000
    inp = ctx.input("chat", n_win)
    ctx.log("announces 12,000/min, enforces 200/s")
    extra = ("--bucket-seconds", "60", "--enforce-seconds", "1")
    with Server(rpm=12_000, extra=extra) as server:
        run = ctx.run("llmbatch", inp, n_win, server=server, timeout=120)
    scenario = "12,000/min announced, per second enforced"
    rows.append(_budget_row(run, scenario, "llmbatch, not told", 15.0, 1.1))

    ctx.log("LiteLLM-style key limit, 120 a fixed minute")
    inp = ctx.input("chat", n)
    with Server(extra=("--key-rpm", "120")) as server:
        run = ctx.run("llmbatch", inp, n, server=server, timeout=400)
    rows.append(_budget_row(run, "key limit 120 a fixed minute", "llmbatch, not told", 120.0, 1.2))
    return rows


def _budget_row(run: Run, scenario: str, label: str, ideal: float, within: float) -> Row:
    row = run.row(scenario, label)
    ratio = _ratio(run, ideal)
    share = (run.http_429 or 0) / run.n
    row.result = f"{ratio:.3f}× the minimum {ideal:.0f}s; 429s {run.http_429} ({share:.1%} of N)"
    row.target = f"≤ {within}×, ≤ 2% 429s"
    row.met = run.ok and ratio <= within and share <= 0.02
    return row


def tokens_learned(ctx: Context) -> list[Row]:
    """No --tpm, a server that announces (and enforces) a token limit: within 1.15x of
    total tokens / TPM, at most 2% 429s beyond the first burst's."""
    tpm, n = 30_000, ctx.sizes.drained_n
    inp = ctx.input("free", n, max_tokens=None)  # no ceiling: the server counts what the answers used
    ctx.log("token limit learned from headers")
    with Server(extra=("--tpm", str(tpm))) as server:
        run = ctx.run("llmbatch", inp, n, server=server, timeout=300)
    used = int(run.server.get("prompt_tokens", 0)) + int(run.server.get("completion_tokens", 0))
    ideal = used / tpm * 60
    row = run.row(f"token limit {tpm:,}/min, not told", "llmbatch, no --tpm")
    beyond = max(0, (run.http_429 or 0) - 64)
    ratio = _ratio(run, ideal)
    row.result = f"{ratio:.3f}× tokens/TPM {ideal:.0f}s ({used:,} tokens); 429s {run.http_429}"
    row.target, row.met = "≤ 1.15×, ≤ 2% 429s beyond the first burst", ratio <= 1.15 and beyond <= 0.02 * n
    return [row]


def oversized(ctx: Context) -> list[Row]:
    """A request of ~10k tokens (5k prompt, 5k answer ceiling) at --tpm 1000, and a small
    one after it: both written within 90 s (not the ten minutes the whole debt is)."""
    path = ctx.tmp / "oversized.jsonl"
    big = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "word " * 4000}],
        "max_tokens": 5000,
    }
    small = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    path.write_bytes(b"".join(orjson.dumps({"custom_id": f"r-{i}", "body": body}) + b"\n"
                              for i, body in enumerate((big, small))))  # fmt: skip
    ctx.log("a request bigger than a minute of --tpm")
    with Server() as server:
        run = ctx.run("llmbatch", path, 2, server=server, args=("--tpm", "1000"), timeout=200)
    row = run.row("oversized request, --tpm 1000", "~10k tokens, then a small one")
    row.result = f"both written after {run.run_s:.0f}s"
    row.target, row.met = "≤ 90 s", run.ok and run.run_s <= 90
    return [row]


# The marginal CPU runs give every client the same allocator setting. Without it the
# bare client paid three memory system calls a request that llmbatch does not: asyncio
# reads a socket into a 256 KiB buffer; a small heap (the bare client's) has no room
# for it at its top, so glibc maps it fresh, shrinks it to the answer's size and unmaps
# it (mmap, mremap, munmap: about 18 us of system CPU a request here),
# while llmbatch's heap, left with free room by its imports, serves it from the heap.
# That flattered llmbatch by about a sixth. A padded heap top serves both from the heap.
ALLOCATOR = {"MALLOC_TOP_PAD_": str(1 << 20)}


def cpu(ctx: Context) -> list[Row]:
    """Marginal client CPU per request at 0 ms latency: (CPU at N - CPU at N/100) /
    (N - N/100), start-up excluded, llmbatch against the lean bare client (long-lived
    workers, bodies serialised once), alternated, each with the same allocator setting
    (ALLOCATOR); judged by the median of each round's ratio to the bare run beside it.
    The bare client with the default allocator is measured too, to show what that
    setting changes."""
    n = ctx.sizes.cpu_n
    small = max(100, n // 100)
    big, little = ctx.input("chat", n), ctx.input("chat", small)
    # kind: (client, environment)
    kinds = {
        "bare": ("bare", ALLOCATOR),
        "llmbatch": ("llmbatch", ALLOCATOR),
        "llmbatch-gc-untuned": ("llmbatch-gc-untuned", ALLOCATOR),
        "bare-default-allocator": ("bare", {}),
    }
    marginal: dict[str, list[float]] = {kind: [] for kind in kinds}
    runs: dict[str, list[Run]] = {kind: [] for kind in kinds}
    for round_ in range(ctx.sizes.cpu_rounds):
        for kind, (client, env) in kinds.items():
            ctx.log(f"marginal CPU round {round_ + 1}: {kind}")
            with Server() as server:
                at_n = ctx.run(client, big, n, server=server, timeout=120 + n * 0.01, env=env)
            with Server() as server:
                at_small = ctx.run(client, little, small, server=server, timeout=120, env=env)
            runs[kind].append(at_n)
            marginal[kind].append((at_n.measured.cpu_s - at_small.measured.cpu_s) * 1000 / (n - small))
    rows = []
    bare = statistics.median(marginal["bare"])
    # The machine drifts between rounds: each round's ratio is to the bare run of the
    # same round, moments apart, and the median of those ratios is the figure judged.
    paired = {kind: [m / b for m, b in zip(marginal[kind], marginal["bare"], strict=True)] for kind in kinds}
    labels = {
        "bare": "bare aiohttp (lean)",
        "llmbatch": "llmbatch (fast)",
        "llmbatch-gc-untuned": "llmbatch, default GC settings",
        "bare-default-allocator": "bare aiohttp, default allocator",
    }
    for kind, label in labels.items():
        row = runs[kind][len(runs[kind]) // 2].row("marginal CPU, 0 ms", label)
        row.marginal_ms = statistics.median(marginal[kind])
        if kind == "bare":
            row.result = "the floor (heap top padded)"
        else:
            ratio = statistics.median(paired[kind]) if bare else float("nan")
            rounds = ", ".join(
                f"{m:.3f} ms {r:.2f}×" for m, r in zip(marginal[kind], paired[kind], strict=True)
            )
            row.result = f"{ratio:.2f}× bare marginal CPU/req, median of the rounds' ratios ({rounds})"
            if kind == "llmbatch":
                row.target, row.met = "≤ 1.05× bare", ratio <= 1.05
        rows.append(row)
    return rows
