"""The report benchmark (issue 24): `llmbatch report OUT` against `llmbatch report OUT
--html PAGE` on the same big output, alternated, each in its own process: wall time,
peak RSS, and the page's size. Targets: the page within 1.5x the text report's time and
1.2x its peak memory, and under 10 MB.

As a script it writes that output, so the benchmark process stays small: N lines of
two models over three hours, most valid, some re-asked, invalid, refused or failed,
one in ten answered through the Batch API:

    python bench/report_page.py OUT N
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench.harness import run_measured

if TYPE_CHECKING:
    from bench.scenarios import Context, Row

__all__ = ["report"]

HOURS = 3  # the finish times are spread over this long


def write_output(out: Path, n: int) -> None:
    from llmbatch.core.errors import PermanentError
    from llmbatch.core.values import Completion, Finished, Request, State
    from llmbatch.output.records import batch_record, finish_ms

    start = finish_ms() - HOURS * 3_600_000
    step = HOURS * 3_600_000 / n
    with out.open("wb", buffering=1 << 20) as dst:
        for i in range(n):
            model = "gpt-4o" if i % 3 == 0 else "gpt-4o-mini"
            body = {"model": model, "messages": [{"role": "user", "content": f"Rate item {i}."}]}
            req = Request(f"r-{i}", body, line=i + 1, fp=i)
            content = f'{{"score": {i % 5}}}' if i % 41 else "Sorry, I am not sure."
            answer = {
                "id": f"chatcmpl-{i}",
                "object": "chat.completion",
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20 + i % 50, "completion_tokens": 5, "total_tokens": 25 + i % 50},
            }  # fmt: skip
            last = Completion(body=answer, request_id=f"req_{i}")
            batch = i % 10 == 0
            extra = {"via": "batch", "batch_id": f"batch_{i // 50_000}"} if batch else {}
            requests = 1 + int(i % 7 == 0) + int(i % 41 == 0)
            common: dict[str, Any] = {"requests": requests, "retries": int(i % 13 == 0),
                                      "latency_ms": 200.0 + (i * 7919) % 3000}  # fmt: skip
            common.update(prompt_tokens=(20 + i % 50) * requests, completion_tokens=5 * requests)
            if i % 97 == 0:  # no answer: no tokens
                common.update(prompt_tokens=0, completion_tokens=0)
                done = Finished(request=req, state=State.FAILED, error=PermanentError("HTTP 400: bad request",
                                code="invalid_request"), **common)  # fmt: skip
            elif i % 41 == 0:
                done = Finished(request=req, state=State.INVALID, last=last, reason="answer is not JSON",
                                **common, **extra)  # fmt: skip
            elif i % 71 == 0:
                done = Finished(request=req, state=State.INVALID, last=last, reason="the model refused",
                                cause="refused", **common, **extra)  # fmt: skip
            else:
                done = Finished(request=req, state=State.VALID, last=last, **common, **extra)
            rec = batch_record(done, "abcd1234")
            rec["llmbatch"]["t"] = int(start + i * step)  # in place: the key keeps its position
            dst.write(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))


def report(ctx: Context) -> list[Row]:
    from bench.scenarios import BENCH_DIR, Row

    n = ctx.sizes.report_n
    out, page = ctx.tmp / f"report-{n}.jsonl", ctx.tmp / "report.html"
    ctx.log(f"report: writing a {n:,}-line output")
    gen = run_measured([sys.executable, str(BENCH_DIR / "report_page.py"), str(out), str(n)],
                       timeout=1800, env=ctx.env)  # fmt: skip
    if gen.returncode != 0:
        raise RuntimeError(f"report_page.py failed: {gen.stderr[-500:]}")
    runs: dict[str, list[tuple[float, float, float]]] = {"text": [], "--html": []}
    for round_ in range(ctx.sizes.rounds):
        for label, extra in (("text", ()), ("--html", ("--html", str(page)))):
            ctx.log(f"report round {round_ + 1}: {label}")
            argv = [sys.executable, "-m", "llmbatch", "report", str(out), *extra]
            m = run_measured(argv, timeout=900, env=ctx.env)
            if m.returncode != 0:
                raise RuntimeError(f"report {label} exit {m.returncode}: {m.stderr[-500:]}")
            runs[label].append((m.wall_s, m.cpu_s, m.maxrss_mb))
    size_mb = page.stat().st_size / 1e6
    out.unlink()
    page.unlink()
    rows: list[Row] = []
    best = {
        label: (min(r[0] for r in rs), min(r[1] for r in rs), max(r[2] for r in rs))
        for label, rs in runs.items()
    }
    for label, (wall, cpu, rss) in best.items():
        rows.append(Row(scenario="report", run=f"llmbatch report {label}, {n:,} lines", n=n, wall_s=wall,
                        run_s=wall, cpu_ms=cpu * 1000 / n, rss_mb=rss,
                        output=f"{ctx.sizes.rounds} runs"))  # fmt: skip
    (t_wall, t_cpu, t_rss), (h_wall, h_cpu, h_rss) = best["text"], best["--html"]
    time_ratio, rss_ratio = h_wall / t_wall, h_rss / t_rss
    rows[1].result = (
        f"{time_ratio:.2f}× the text report's time (CPU {h_cpu:.1f} s, {h_cpu / t_cpu:.2f}× its "
        f"{t_cpu:.1f} s), {rss_ratio:.2f}× its memory; page {size_mb:.1f} MB"
    )
    judged = "" if n >= 1_000_000 else " (judged at full size)"
    rows[1].target = "≤ 1.5× time, ≤ 1.2× memory, < 10 MB" + judged
    if n >= 1_000_000:
        rows[1].met = time_ratio <= 1.5 and rss_ratio <= 1.2 and size_mb < 10
    rows[0].result = "the baseline (best wall time, highest peak RSS of the runs)"
    return rows


if __name__ == "__main__":
    write_output(Path(sys.argv[1]), int(sys.argv[2]))
