"""The ``--deadline`` benchmark (issue 26): 5,000 items through the Batch API whose
batches would take ten minutes to end, a deadline in two minutes, and a live limit that
finishes the rest in about one (5,000 requests a minute, enforced by the server): done
before the deadline, at least half of the items answered by batches, none paid twice
(the server's batch and live answers add up to the items), and the summary's cost split
right (each way's tokens at its price). ``--quick`` runs it at a tenth of the times.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.harness import Server
from llmbatch.cost.prices import cost, price_for

if TYPE_CHECKING:
    from bench.scenarios import Context, Row

__all__ = ["deadline"]

N = 5_000
MODEL = "gpt-4o-mini"  # the inputs' model
BATCHES = 5  # of 1,000 items each, running side by side
DEADLINE_S = 120.0
BATCH_END_S = 600.0  # when a batch would end by itself
LINES_PER_S = 7.0  # each batch's lines answered a second: about 60% by the go-live point
POLL_S = 2.0


def deadline(ctx: Context) -> list[Row]:
    s = ctx.sizes.deadline_scale  # 1: the figures above; 0.1 with --quick
    rpm = N / (DEADLINE_S / 2 * s) * 60  # the whole input in half the deadline, live
    inp = ctx.input("chat", N)
    extra = (
        "--batch-lines-per-second", f"{LINES_PER_S / s:g}", "--batch-min-seconds", f"{BATCH_END_S * s:g}",
    )  # fmt: skip
    args = (
        "--batch-api", "--batch-requests", str(N // BATCHES), "--poll-every", f"{POLL_S * s:g}",
        "--rpm", f"{rpm:g}", "--deadline", f"{DEADLINE_S * s:g}s",
    )  # fmt: skip
    ctx.log(f"deadline: {N:,} items, batches ending after {BATCH_END_S * s:g}s, deadline {DEADLINE_S * s:g}s")
    with Server(rpm=rpm, extra=extra) as server:
        run = ctx.run("llmbatch", inp, N, server=server, args=args, timeout=DEADLINE_S * s * 3 + 60)
    row = run.row("--deadline", f"llmbatch --deadline {DEADLINE_S * s:g}s, batches of {BATCH_END_S * s:g}s")
    ways = run.server.get("by_way", {})
    batch, live = int(ways.get("batch", 0)), int(ways.get("live", 0))
    info = run.info
    answers = int(info.get("answers", 0))
    went = (info.get("deadline") or {}).get("went_live_s")
    tokens = {w: (v["prompt_tokens"], v["completion_tokens"]) for w, v in info.get("ways", {}).items()}
    expected = sum(cost(price_for(MODEL, batch=w == "batch"), *t) or 0.0 for w, t in tokens.items())
    spent = info.get("cost_usd") or 0.0
    split_ok = abs(spent - expected) <= 1e-9 + 1e-6 * expected
    in_time = row.wall_s is not None and row.wall_s <= DEADLINE_S * s
    all_live, all_batch = info.get("cost_all_live_usd") or 0.0, info.get("cost_all_batch_usd") or 0.0
    row.result = (
        f"went live at {went or 0:.1f}s, done {row.wall_s or 0:.1f}s; {batch:,} by batch + {live:,} live "
        f"= {batch + live:,} server answers for {answers:,} of ours; cost ${spent:.4f} "
        f"(all live ${all_live:.4f}, all batch ${all_batch:.4f})"
    )
    row.target = "before the deadline, ≥ half by batch, answers = items + re-asks, cost split right"
    row.met = run.ok and in_time and batch * 2 >= N and batch + live == answers and split_ok
    return [row]
