"""Tables in and out (issue 27): the same rows as JSONL, CSV and Parquet against the fake
server (time, CPU, peak RSS, fingerprints equal), a SIGKILL and resume of each table,
Parquet's memory from 10,000 to 1,000,000 rows, and `export --to parquet` of a
1,000,000-line output read back in pyarrow."""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench.harness import Measured, Server, run_measured

if TYPE_CHECKING:
    from bench.scenarios import Context, Row

__all__ = ["tables"]

FORMS = ("jsonl", "csv", "parquet")
REPO = Path(__file__).resolve().parent.parent
TEMPLATE = ("--prompt", "{text} ({topic})", "--id-field", "id", "-m", "gpt-4o-mini")


def _sizes(ctx: Context) -> dict[str, Any]:
    from bench.scenarios import QUICK

    if ctx.sizes is QUICK:
        return {"n": 10_000, "rounds": 1, "memory": (10_000, 200_000), "export": 200_000}
    return {"n": 100_000, "rounds": 3, "memory": (10_000, 1_000_000), "export": 1_000_000}


def _helper(ctx: Context, *args: object) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.table_files", *map(str, args)]
    done = subprocess.run(argv, capture_output=True, check=True, timeout=1800, env=ctx.env, cwd=REPO)
    return orjson.loads(done.stdout) if done.stdout.strip() else {}


def _files(ctx: Context, n: int) -> dict[str, Path]:
    if not (ctx.tmp / f"rows-{n}.parquet").exists():
        _helper(ctx, "write", ctx.tmp, n)
    return {form: ctx.tmp / f"rows-{n}.{form}" for form in FORMS}


def _argv(inp: Path, out: Path, summary: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "llmbatch", "run", str(inp), "-o", str(out), "--no-live", "-q", "--fresh",
            "--summary-json", str(summary), *TEMPLATE, *args]  # fmt: skip


def _run(ctx: Context, inp: Path, out: Path, *args: str, timeout: float) -> tuple[Measured, float]:
    summary = ctx.tmp / "tables-summary.json"
    summary.unlink(missing_ok=True)
    m = run_measured(_argv(inp, out, summary, *args), timeout=timeout, env=ctx.env)
    if m.returncode != 0:
        ctx.log(f"  exit {m.returncode}: {m.stderr.strip()[-400:]}")
    elapsed = (
        float(orjson.loads(summary.read_bytes()).get("elapsed_s") or m.wall_s)
        if summary.exists()
        else m.wall_s
    )
    ctx.log(f"  {inp.name}: run {elapsed:.2f}s, cpu {m.cpu_s:.2f}s, rss {m.maxrss_mb:.0f} MB")
    return m, elapsed


def _import_cost(ctx: Context) -> float:
    """Peak RSS that pyarrow's own import and code add to llmbatch's imports (MB): a
    process that reads a 10-row Parquet file, less one that only imports llmbatch (the
    reader touches more of pyarrow's libraries than the import does, ~14 MB)."""
    tiny = _files(ctx, 10)["parquet"]
    base = "import llmbatch.app.cli, llmbatch.app.run"
    read = "; import pyarrow.parquet as pq"
    read += f"; [b.to_pylist() for b in pq.ParquetFile({str(tiny)!r}).iter_batches()]"
    env = {**ctx.env, "ARROW_DEFAULT_MEMORY_POOL": "system"}
    plain = run_measured([sys.executable, "-c", base], timeout=60, env=env).maxrss_mb
    arrow = run_measured([sys.executable, "-c", base + read], timeout=60, env=env).maxrss_mb
    return arrow - plain


def tables(ctx: Context) -> list[Row]:
    from bench.scenarios import Row

    sizes = _sizes(ctx)
    n = sizes["n"]
    files = _files(ctx, n)
    rows: list[Row] = []
    runs: dict[str, list[tuple[Measured, float]]] = {form: [] for form in FORMS}
    outs = {form: ctx.tmp / f"tables-out-{form}.jsonl" for form in FORMS}
    with Server() as server:
        for round_ in range(sizes["rounds"]):
            for form in FORMS:  # interleaved: a slow moment of the machine hits every form
                ctx.log(f"tables round {round_ + 1}: {n:,} rows as {form}")
                runs[form].append(_run(ctx, files[form], outs[form], "--base-url", server.base_url,
                                       timeout=600))  # fmt: skip
    same = {form: _helper(ctx, "compare", outs["jsonl"], outs[form]) for form in FORMS[1:]}
    arrow_mb = _import_cost(ctx)
    base_run = statistics.median(e for _, e in runs["jsonl"])
    base_cpu = statistics.median(m.cpu_s for m, _ in runs["jsonl"])
    base_rss = statistics.median(m.maxrss_mb for m, _ in runs["jsonl"])
    for form in FORMS:
        run_s = statistics.median(e for _, e in runs[form])
        cpu = statistics.median(m.cpu_s for m, _ in runs[form])
        rss = statistics.median(m.maxrss_mb for m, _ in runs[form])
        wall = statistics.median(m.wall_s for m, _ in runs[form])
        row = Row(scenario=f"tables in, {n:,} rows, 0 ms", run=f"llmbatch, {form}", n=n, run_s=run_s,
                  wall_s=wall, cpu_ms=cpu * 1000 / n, rss_mb=rss,
                  output=f"median of {len(runs[form])}")  # fmt: skip
        if form == "jsonl":
            row.result = "the baseline"
        else:
            check = same[form]
            allowance = arrow_mb if form == "parquet" else 0.0
            row.result = (
                f"run {run_s / base_run:.2f}×, CPU {cpu / base_cpu:.2f}× JSONL; RSS {rss - base_rss:+.0f} MB "
                f"(pyarrow's own: {arrow_mb:.0f} MB); {check.get('ids', 0):,} ids, "
                f"{check.get('differ', '?')} differ from JSONL (line, fingerprint, state, answer)"
            )
            row.target = "≤ 1.1× JSONL's time (CPU); RSS ≤ JSONL's (+ pyarrow's own); same fps"
            row.met = cpu / base_cpu <= 1.1 and rss <= base_rss + allowance + 2 and bool(check.get("same"))
        rows.append(row)
    for out in outs.values():
        out.unlink(missing_ok=True)
    rows += _resume(ctx, files, n)
    rows += _parquet_memory(ctx, sizes["memory"])
    rows.append(_export(ctx, sizes["export"]))
    return rows


def _resume(ctx: Context, files: dict[str, Path], n: int) -> list[Row]:
    """SIGKILL a CSV and a Parquet run a third of the way, then rerun to the end."""
    from bench.scenarios import Row

    rows = []
    for form in ("csv", "parquet"):
        out = ctx.tmp / f"resume-{form}.jsonl"
        summary = ctx.tmp / "resume-summary.json"
        with Server(latency_ms=2) as server:
            argv = _argv(files[form], out, summary, "--base-url", server.base_url)
            ctx.log(f"tables resume: {form}, SIGKILL at a third")
            proc = subprocess.Popen(argv, env=ctx.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                if sum(int(v) for v in server.stats().get("by_status", {}).values()) >= n // 3:
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            kept = sum(1 for _ in out.open("rb")) if out.exists() else 0
            again = [a for a in argv if a != "--fresh"]
            m = run_measured(again, timeout=600, env=ctx.env)
        check = _verify(ctx, out)
        out.unlink(missing_ok=True)
        ok = check.get("lines") == check.get("unique") == check.get("answered") == n and m.returncode == 0
        rows.append(Row(scenario="tables, SIGKILL and resume", run=f"llmbatch, {form}", n=n, wall_s=m.wall_s,
                        rss_mb=m.maxrss_mb, ok=ok, output=f"{check.get('lines', 0):,} lines, "
                        f"{check.get('unique', 0):,} ids, {check.get('answered', 0):,} ok",
                        result=f"killed with {kept:,} lines written; the rerun exit {m.returncode}",
                        target="each id once", met=ok))  # fmt: skip
    return rows


def _verify(ctx: Context, out: Path) -> dict[str, int]:
    argv = [sys.executable, "-m", "bench.verify", str(out)]
    done = subprocess.run(argv, capture_output=True, check=True, timeout=600, env=ctx.env, cwd=REPO)
    result: dict[str, int] = orjson.loads(done.stdout)
    return result


def _parquet_memory(ctx: Context, ns: tuple[int, ...]) -> list[Row]:
    """Peak RSS of a Parquet run on the in-process fake provider, small and big."""
    from bench.scenarios import Row

    rows = []
    base: float | None = None
    for n in ns:
        inp = _files(ctx, n)["parquet"]
        out = ctx.tmp / f"pq-memory-{n}.jsonl"
        ctx.log(f"tables memory: {n:,} Parquet rows")
        m, elapsed = _run(
            ctx, inp, out, "--provider", "fake", "--fake-latency-ms", "0", timeout=120 + n * 0.003
        )
        row = Row(scenario="tables, Parquet memory (fake provider)", run=f"llmbatch, {n:,} rows", n=n,
                  wall_s=m.wall_s, run_s=elapsed, cpu_ms=m.cpu_s * 1000 / n, rss_mb=m.maxrss_mb)  # fmt: skip
        if base is None:
            base = m.maxrss_mb
            row.result = "the baseline"
        else:
            ratio = m.maxrss_mb / base
            row.result = f"{ratio:.2f}× the {ns[0]:,}-row run"
            row.target, row.met = "≤ 1.2×", ratio <= 1.2
        if n != ns[-1]:
            out.unlink(missing_ok=True)
        rows.append(row)
    return rows


def _export(ctx: Context, n: int) -> Row:
    """`export --to parquet --input` of the big Parquet run's output, read back."""
    from bench.scenarios import Row

    out = ctx.tmp / f"pq-memory-{n}.jsonl"
    if not out.exists():  # quick sizes: the memory rows' biggest run may be another size
        _run(
            ctx, _files(ctx, n)["parquet"], out, "--provider", "fake", "--fake-latency-ms", "0", timeout=1800
        )
    table = ctx.tmp / "export.parquet"
    argv = [sys.executable, "-m", "llmbatch", "export", str(out), "-o", str(table),
            "--input", str(_files(ctx, n)["parquet"]), "--id-field", "id"]  # fmt: skip
    ctx.log(f"tables export: {n:,} lines to Parquet")
    m = run_measured(argv, timeout=1800, env=ctx.env)
    check = _helper(ctx, "check-export", table) if table.exists() else {}
    types = check.get("types", {})
    want = {"id": "string", "llm_custom_id": "string", "llm_line": "int64", "llm_answer": "string",
            "llm_valid": "bool", "llm_prompt_tokens": "int64", "llm_cost_usd": "double"}  # fmt: skip
    ok = check.get("rows") == check.get("unique_ids") == n and all(types.get(k) == v for k, v in want.items())
    for path in (out, table):
        path.unlink(missing_ok=True)
    if m.returncode != 0:
        ctx.log(f"  export exit {m.returncode}: {m.stderr.strip()[-400:]}")
    return Row(scenario="tables out: export --to parquet --input", run=f"llmbatch export, {n:,} lines", n=n,
               wall_s=m.wall_s, cpu_ms=m.cpu_s * 1000 / n, rss_mb=m.maxrss_mb, ok=ok,
               output=f"{check.get('rows', 0):,} rows, {check.get('unique_ids', 0):,} ids, "
               f"{check.get('row_groups', 0)} row groups, {len(types)} columns",
               result="types: " + ", ".join(f"{k} {types.get(k)}" for k in want),
               target="one row per id, the expected columns and types", met=ok)  # fmt: skip
