"""Benchmarks of the run's other modes: the Batch API mode at scale (issue 13), the cost
of --ordered (issue 14), and one quota shared by processes through Redis (issue 16)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from bench.harness import Redis, Server, run_together

if TYPE_CHECKING:
    from bench.scenarios import Context, Row

__all__ = ["batch_api", "ordered", "shared"]


def batch_api(ctx: Context) -> list[Row]:
    """--batch-api with the default file limits over 10x more items (3 batches of up to
    50,000): peak RSS within 1.3x of the small run (the split and the collection
    stream), and llmbatch's own CPU time, the waiting aside."""
    rows: list[Row] = []
    base: float | None = None
    for n in ctx.sizes.batch_ns:
        inp = ctx.input("chat", n)
        ctx.log(f"Batch API mode: {n:,} items")
        with Server() as server:
            run = ctx.run("llmbatch", inp, n, server=server, args=("--batch-api", "--poll-every", "0.5"),
                          timeout=900)  # fmt: skip
        creates = int(run.server.get("creates", 0))
        row = run.row("Batch API mode", f"llmbatch --batch-api, {n:,} items")
        phases = run.info.get("phases_s", {})
        cpu = run.measured.cpu_s
        row.result = f"{creates} batches; llmbatch CPU {cpu:.1f}s over {run.run_s:.1f}s ({phases})"
        rss = run.measured.maxrss_mb
        if base is None:
            base = rss
        else:
            ratio = rss / base
            row.result += f"; RSS {ratio:.2f}× the {ctx.sizes.batch_ns[0]:,}-item run"
            row.target = "RSS ≤ 1.3×, 3 batches" + ("" if n >= 100_001 else " (judged at full size)")
            if n >= 100_001:
                row.met = ratio <= 1.3 and creates == 3 and run.ok
        rows.append(row)
    return rows


def ordered(ctx: Context) -> list[Row]:
    """What --ordered costs against completion order, with answers that come back in
    a shuffled order (a latency with jitter): wall time and peak RSS, alternated."""
    n = ctx.sizes.ordered_n
    inp = ctx.input("chat", n)
    results: dict[str, list[Row]] = {"unordered": [], "--ordered": []}
    for round_ in range(ctx.sizes.rounds):
        for label, args in (("unordered", ()), ("--ordered", ("--ordered",))):
            ctx.log(f"ordered round {round_ + 1}: {label}")
            with Server(latency_ms=2, extra=("--jitter-ms", "40")) as server:
                run = ctx.run("llmbatch", inp, n, server=server, args=args, timeout=300)
            results[label].append(run.row("--ordered, 2±40 ms", f"llmbatch {label}"))
    rows = []
    base_wall = statistics.median(r.wall_s or 0 for r in results["unordered"])
    base_rss = statistics.median(r.rss_mb or 0 for r in results["unordered"])
    for label, runs in results.items():
        row = runs[len(runs) // 2]
        row.wall_s = statistics.median(r.wall_s or 0 for r in runs)
        row.rss_mb = statistics.median(r.rss_mb or 0 for r in runs)
        if label == "unordered":
            row.result = "the baseline"
        else:
            wall, rss = row.wall_s / base_wall, row.rss_mb / base_rss
            row.result = f"wall {wall:.2f}×, peak RSS {rss:.2f}× unordered (medians of {len(runs)})"
        rows.append(row)
    return rows


def shared(ctx: Context) -> list[Row]:
    """Three processes, one shard each, sharing R requests/min through Redis against a
    server that enforces R: the last finishes within 1.1x of N/R with at most 1% 429s;
    the same three without --redis, for comparison; and a shared token budget."""
    rpm, tpm, n = 3000, 60_000, ctx.sizes.shared_n
    chat, free = ctx.input("chat", n), ctx.input("free", n, max_tokens=None)
    rows = []
    for redis in (True, False):
        rpm_flags = ("--rpm", str(rpm))
        label = f"3 shards, {'--redis' if redis else 'no Redis'}, --rpm {rpm}{'' if redis else ' each'}"
        rows.append(_shared_run(ctx, label, chat, n, rpm_flags, redis, ideal=n / rpm * 60))
    for redis in (True, False):
        tpm_flags = ("--tpm", str(tpm))
        label = f"3 shards, {'--redis' if redis else 'no Redis'}, --tpm {tpm}{'' if redis else ' each'}"
        rows.append(_shared_run(ctx, label, free, n, tpm_flags, redis, tpm=tpm))
    return rows


def _shared_run(
    ctx: Context,
    label: str,
    inp: Path,
    n: int,
    limit: tuple[str, ...],
    redis: bool,
    *,
    ideal: float | None = None,
    tpm: int = 0,
    procs: int = 3,
) -> Row:
    """`procs` processes, one shard each, told `limit`, against a server enforcing it;
    `ideal` is N/R, else the server's own token count over `tpm`."""
    from bench.scenarios import Row, _verify

    ctx.log(f"shared quota: {label}")
    outs = [ctx.tmp / f"shared-{k}.jsonl" for k in range(procs)]
    summaries = [ctx.tmp / f"shared-{k}.json" for k in range(procs)]
    for path in (*outs, *summaries):
        path.unlink(missing_ok=True)
    with Server(latency_ms=20, extra=limit) as server, Redis(ctx.tmp) as store:
        argvs = []
        for k in range(procs):
            out, summary = ctx.tmp / "shared-{shard}.jsonl", ctx.tmp / "shared-{shard}.json"
            argv = [sys.executable, "-m", "llmbatch", "run", str(inp), "-o", str(out), "--no-live", "-q",
                    "--shard", f"{k}/{procs}", "--summary-json", str(summary),
                    "--base-url", server.base_url, *limit]  # fmt: skip
            if redis:
                argv += ["--redis", store.url]
            argvs.append(argv)
        measured = run_together(argvs, timeout=900, env=ctx.env)
        stats = server.stats()
    for m in measured:
        if m.returncode not in (0, 1):
            ctx.log(f"  a shard exited {m.returncode}: {m.stderr.strip()[-300:]}")
    lines = sum(_verify(o).get("lines", 0) for o in outs)
    wall = max(m.wall_s for m in measured)
    runs = [orjson.loads(s.read_bytes()) for s in summaries if s.exists()]
    run_s = max((float(r.get("elapsed_s", 0)) for r in runs), default=wall)
    http_429 = int(stats.get("by_status", {}).get("429", 0))
    if ideal is None:
        used = int(stats.get("prompt_tokens", 0)) + int(stats.get("completion_tokens", 0))
        ideal = used / tpm * 60
    row = Row(scenario="one quota, 3 processes", run=label, n=n, wall_s=wall, run_s=run_s,
              rss_mb=max(m.maxrss_mb for m in measured), http_429=http_429,
              output=f"{lines:,} lines in {procs} files", ok=lines == n)  # fmt: skip
    ratio = run_s / ideal if ideal else float("nan")
    row.result = (
        f"last done after {ratio:.2f}× the ideal {ideal:.0f}s; 429s {http_429} ({http_429 / n:.1%} of N)"
    )
    if redis and n >= 3000:
        row.target, row.met = "≤ 1.1×, ≤ 1% 429s", ratio <= 1.1 and http_429 <= 0.01 * n and row.ok
    elif redis:  # a few seconds' work: start-up weighs too much to judge
        row.target = "≤ 1.1×, ≤ 1% 429s (judged at full size)"
    return row
