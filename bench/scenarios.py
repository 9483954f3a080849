"""The benchmark scenarios. Each returns table rows; every figure in a row, and every
ratio, comes from runs made one after the other in the same invocation."""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.harness import Measured, Server, client_env, listen_overflows, run_measured, write_input

__all__ = ["SCENARIOS", "Context", "Row", "Sizes"]

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
API_KEY = "sk-bench"


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    overhead_n: int
    rounds: int  # overhead and latency: bare and llmbatch run this many times, interleaved
    latency_n: int
    rate_rpm: int
    rate_n: int
    tpm_n: int
    memory_ns: tuple[int, ...]  # the first is the baseline
    rerun_ns: tuple[int, ...]  # outputs a rerun finds; the first is the baseline
    drained_n: int  # requests against a drained bucket
    cpu_n: int  # marginal CPU: N and N/100
    cpu_rounds: int  # marginal CPU: rounds, each judged against its own bare run
    batch_ns: tuple[int, ...]  # Batch API mode; the first is the baseline
    ordered_n: int
    shared_n: int  # items shared by three processes
    report_n: int  # lines of the output `report` and `report --html` read
    deadline_scale: float = 1.0  # --deadline: its times, as a share of the issue's


FULL = Sizes(
    overhead_n=20_000,
    rounds=3,
    latency_n=20_000,
    rate_rpm=12_000,
    rate_n=15_000,
    tpm_n=6,
    memory_ns=(10_000, 200_000, 1_000_000),
    rerun_ns=(10_000, 1_000_000),
    drained_n=600,
    cpu_n=50_000,
    cpu_rounds=5,
    batch_ns=(12_000, 120_000),
    ordered_n=20_000,
    shared_n=3_000,
    report_n=1_000_000,
)
QUICK = Sizes(
    overhead_n=2_000,
    rounds=1,
    latency_n=2_560,
    rate_rpm=12_000,
    rate_n=2_000,
    tpm_n=4,
    memory_ns=(10_000, 200_000),
    rerun_ns=(10_000, 100_000),
    drained_n=200,
    cpu_n=5_000,
    cpu_rounds=1,
    batch_ns=(1_200, 12_000),
    ordered_n=2_000,
    shared_n=300,
    report_n=100_000,
    deadline_scale=0.1,
)


@dataclass(slots=True)
class Row:
    scenario: str
    run: str
    n: int
    wall_s: float | None = None  # the process, start-up included
    run_s: float | None = None  # inside the process, start-up excluded
    cpu_ms: float | None = None  # CPU per request, everything included
    marginal_ms: float | None = None  # CPU per extra request, start-up and fixed costs excluded
    rss_mb: float | None = None
    server_cpu: float | None = None  # share of one core the server used over the run
    http_429: int | None = None
    output: str = ""
    ok: bool = True  # the output is complete: N lines, N unique ids, N answered
    result: str = ""
    target: str = ""
    met: bool | None = None

    @property
    def rps(self) -> float | None:
        return self.n / self.run_s if self.run_s else None


@dataclass(slots=True)
class Run:
    """One client process against one fresh server (or none)."""

    n: int
    measured: Measured
    info: dict[str, Any]  # the client's own report: llmbatch's summary or the script's line
    check: dict[str, int]
    server: dict[str, Any] = field(default_factory=dict)
    server_cpu_s: float | None = None

    @property
    def run_s(self) -> float:
        elapsed = self.info.get("elapsed_s")
        return float(elapsed) if elapsed else self.measured.wall_s

    @property
    def ok(self) -> bool:
        c = self.check
        return (
            not self.measured.timed_out and c.get("lines") == c.get("unique") == c.get("answered") == self.n
        )

    @property
    def http_429(self) -> int | None:
        if not self.server:
            return None
        return int(self.server.get("by_status", {}).get("429", 0))

    def output(self) -> str:
        c = self.check
        text = f"{c.get('lines', 0):,} lines, {c.get('unique', 0):,} ids, {c.get('answered', 0):,} ok"
        if self.measured.timed_out:
            text += ", TIMED OUT"
        elif self.measured.returncode not in (0, 1):
            text += f", exit {self.measured.returncode}"
        return text

    def row(self, scenario: str, label: str) -> Row:
        m = self.measured
        server_cpu = None
        if self.server_cpu_s is not None and m.wall_s:
            server_cpu = self.server_cpu_s / m.wall_s
        return Row(
            scenario=scenario,
            run=label,
            n=self.n,
            wall_s=m.wall_s,
            run_s=self.run_s,
            cpu_ms=m.cpu_s * 1000 / self.n,
            rss_mb=m.maxrss_mb,
            server_cpu=server_cpu,
            http_429=self.http_429,
            output=self.output(),
            ok=self.ok,
        )


class Context:
    """Where inputs and outputs go, and how each kind of client is started."""

    def __init__(self, tmp: Path, sizes: Sizes, log: Callable[[str], None]) -> None:
        self.tmp = tmp
        self.sizes = sizes
        self.log = log
        self.env = client_env(OPENAI_API_KEY=API_KEY, PYTHONPATH=str(REPO))

    def input(self, name: str, n: int, *, max_tokens: int | None = 16) -> Path:
        path = self.tmp / f"{name}-{n}-{max_tokens}.jsonl"
        if not path.exists():
            write_input(path, n, max_tokens=max_tokens)
        return path

    def run(
        self,
        client: str,
        inp: Path,
        n: int,
        *,
        server: Server | None = None,
        args: tuple[str, ...] = (),
        concurrency: int = 64,
        timeout: float,
        env: dict[str, str] | None = None,
    ) -> Run:
        """Run one client to completion, then read the server's counters and check the output."""
        out = self.tmp / f"out-{client}.jsonl"
        summary = self.tmp / "summary.json"
        summary.unlink(missing_ok=True)
        if client == "bare":
            assert server is not None
            argv = [sys.executable, str(BENCH_DIR / "bare_client.py"), str(inp), str(out)]
            argv += ["--url", server.url, "--concurrency", str(concurrency)]
        elif client == "sdk-usual":
            assert server is not None
            argv = [sys.executable, str(BENCH_DIR / "sdk_usual_client.py"), str(inp), str(out)]
            argv += ["--base-url", server.base_url, "--concurrency", str(concurrency)]
        else:
            # llmbatch-gc-untuned: the same, with Python's default collector settings.
            entry = (
                [str(BENCH_DIR / "gc_untuned.py")] if client == "llmbatch-gc-untuned" else ["-m", "llmbatch"]
            )
            argv = [sys.executable, *entry, "run", str(inp), "-o", str(out), "--no-live", "-q"]
            argv += ["--fresh", "--summary-json", str(summary), "--concurrency", str(concurrency)]
            if server is not None:
                argv += ["--base-url", server.base_url]
            argv += list(args)
        cpu_before = server.cpu_s() if server is not None else None
        measured = run_measured(argv, timeout=timeout, env={**self.env, **(env or {})})
        server_cpu = server.cpu_s() - cpu_before if server is not None and cpu_before is not None else None
        info = measured.json()
        if summary.exists():
            info = orjson.loads(summary.read_bytes())
        if measured.returncode not in (0, 1) or measured.timed_out:
            self.log(f"  {client} exited {measured.returncode}: {measured.stderr.strip()[-500:]}")
        run = Run(
            n=n,
            measured=measured,
            info=info,
            check=_verify(out),
            server=server.stats() if server is not None else {},
            server_cpu_s=server_cpu,
        )
        out.unlink(missing_ok=True)
        self.log(
            f"  {client} {' '.join(args)}: wall {measured.wall_s:.2f}s, run {run.run_s:.2f}s, "
            f"cpu {measured.cpu_s:.2f}s, rss {measured.maxrss_mb:.0f} MB, {run.output()}"
        )
        return run


def _verify(out: Path) -> dict[str, int]:
    if not out.exists():
        return {}
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "verify.py"), str(out)],
        capture_output=True,
        timeout=600,
        check=True,
    )
    check: dict[str, int] = orjson.loads(done.stdout)
    return check


def _median_row(runs: list[Run], scenario: str, label: str) -> Row:
    rows = [r.row(scenario, label) for r in runs]
    row = rows[0]
    if len(rows) > 1:
        row.run = f"{label}, median of {len(rows)}"
        for name in ("wall_s", "run_s", "cpu_ms", "rss_mb", "server_cpu"):
            values = [getattr(r, name) for r in rows if getattr(r, name) is not None]
            setattr(row, name, statistics.median(values) if values else None)
        row.ok = all(r.ok for r in rows)
        row.output = "; ".join(dict.fromkeys(r.output for r in rows))
    return row


# --- 1. overhead -----------------------------------------------------------------------


def overhead(ctx: Context) -> list[Row]:
    """llmbatch against a bare aiohttp loop, 0 ms latency: what llmbatch costs per request."""
    n = ctx.sizes.overhead_n
    small = max(100, n // 100)  # for the marginal cost: CPU(n) - CPU(small), start-up cancels out
    inp, inp_small = ctx.input("chat", n), ctx.input("chat", small)
    clients = {
        "bare": ("bare aiohttp", ()),
        "llmbatch": ("llmbatch (fast)", ()),
        "llmbatch-sdk": ("llmbatch --transport sdk", ("--transport", "sdk")),
        "sdk-usual": ("openai SDK, usual way", ()),
    }
    runs: dict[str, list[Run]] = {name: [] for name in clients}
    base: dict[str, Run] = {}
    timeout = 120 + n * 0.02

    def one(name: str, path: Path, count: int) -> Run:
        kind = "llmbatch" if name.startswith("llmbatch") else name
        with Server() as server:
            return ctx.run(kind, path, count, server=server, args=clients[name][1], timeout=timeout)

    for round_ in range(ctx.sizes.rounds):
        for name in ("bare", "llmbatch"):
            ctx.log(f"overhead round {round_ + 1}: {name}")
            runs[name].append(one(name, inp, n))
    for name in ("llmbatch-sdk", "sdk-usual"):
        ctx.log(f"overhead: {name}")
        runs[name].append(one(name, inp, n))
    for name in clients:
        base[name] = one(name, inp_small, small)

    rows = []
    for name, (label, _) in clients.items():
        row = _median_row(runs[name], "overhead", label)
        cpu_n = (row.cpu_ms or 0.0) * n / 1000
        row.marginal_ms = (cpu_n - base[name].measured.cpu_s) * 1000 / (n - small)
        rows.append(row)
    bare = rows[0]
    bare.result = "the floor"
    for row in rows[1:]:
        row.result = (
            f"{_ratio(row.rps, bare.rps):.2f}× bare req/s; CPU/req {_ratio(row.cpu_ms, bare.cpu_ms):.2f}× "
            f"all-in, {_ratio(row.marginal_ms, bare.marginal_ms):.2f}× marginal"
        )
    return rows


def _ratio(a: float | None, b: float | None) -> float:
    return a / b if a is not None and b else float("nan")


# --- 2. latency-bound ------------------------------------------------------------------


def latency(ctx: Context) -> list[Row]:
    """200 ms answers, 256 in flight: does the window stay full?"""
    n = ctx.sizes.latency_n
    conc = 256
    ideal = n / conc * 0.2
    inp = ctx.input("chat", n)
    labels = {"bare": "bare aiohttp, 256 in flight", "llmbatch": "llmbatch -c 256"}
    runs: dict[str, list[Run]] = {kind: [] for kind in labels}
    overflows = listen_overflows()
    for round_ in range(ctx.sizes.rounds):
        for kind in labels:
            ctx.log(f"latency round {round_ + 1}: {kind}")
            with Server(latency_ms=200) as server:
                run = ctx.run(kind, inp, n, server=server, concurrency=conc, timeout=120 + ideal * 4)
            runs[kind].append(run)
    overflows = listen_overflows() - overflows
    rows = []
    for kind, label in labels.items():
        row = _median_row(runs[kind], "latency 200 ms", label)
        ratio = (row.run_s or 0.0) / ideal
        peak = max(int(r.server.get("max_in_flight", 0)) for r in runs[kind])
        row.result = f"{ratio:.3f}× ideal {ideal:.1f}s; server saw {peak} in flight"
        if kind == "llmbatch" and n >= FULL.latency_n:
            row.target, row.met = "≤ 1.1× ideal", ratio <= 1.1
        elif kind == "llmbatch":  # a few rounds: start-up and connecting weigh too much to judge
            row.target = "≤ 1.1× ideal (judged at full N)"
            if overflows:
                row.result += f"; {overflows} connections dropped by full listen queues during the runs"
        rows.append(row)
    return rows


# --- 3. rate-limited -------------------------------------------------------------------


def rate_limited(ctx: Context) -> list[Row]:
    """A server enforcing R requests/minute: told the limit, not told, and a tiny --tpm."""
    rpm, n = ctx.sizes.rate_rpm, ctx.sizes.rate_n
    expected = n / rpm * 60
    inp = ctx.input("chat", n)
    rows = []

    ctx.log(f"rate-limited: --rpm {rpm}")
    with Server(rpm=rpm) as server:
        run = ctx.run("llmbatch", inp, n, server=server, args=("--rpm", str(rpm)), timeout=120 + expected * 3)
    row = run.row(f"rate limit {rpm:,}/min", f"llmbatch --rpm {rpm}")
    ratio = run.run_s / expected
    share = (run.http_429 or 0) / n
    row.result = f"{ratio:.3f}× N/R {expected:.1f}s; 429s {share:.2%} of N"
    row.target, row.met = "≤ 1.05×, ≤ 1% 429s", ratio <= 1.05 and share <= 0.01
    rows.append(row)

    ctx.log("rate-limited: no --rpm")
    with Server(rpm=rpm) as server:
        run = ctx.run("llmbatch", inp, n, server=server, timeout=120 + expected * 5)
    row = run.row(f"rate limit {rpm:,}/min", "llmbatch, not told the limit")
    achieved = n / run.run_s * 60
    share = (run.http_429 or 0) / n
    retries = run.info.get("retries", {})
    row.result = f"{achieved / rpm:.1%} of R ({achieved:,.0f}/min); 429s {share:.1%} of N; retries {retries}"
    row.target, row.met = "all N, ≥ 80% of R", run.ok and achieved >= 0.8 * rpm
    rows.append(row)

    ctx.log("rate-limited: no --rpm, server announces no limit")
    with Server(rpm=rpm, limit_headers=False) as server:
        run = ctx.run("llmbatch", inp, n, server=server, timeout=120 + expected * 5)
    row = run.row(f"rate limit {rpm:,}/min", "llmbatch, not told, no x-ratelimit headers")
    achieved = n / run.run_s * 60
    share = (run.http_429 or 0) / n
    row.result = f"{achieved / rpm:.1%} of R ({achieved:,.0f}/min); 429s {share:.1%} of N"
    row.target, row.met = "all N, ≥ 80% of R", run.ok and achieved >= 0.8 * rpm
    rows.append(row)

    tpm, max_tokens, small = 600, 1000, ctx.sizes.tpm_n
    inp_tpm = ctx.input("tpm", small, max_tokens=max_tokens)
    ctx.log(f"rate-limited: --tpm {tpm} below one request's estimate")
    with Server() as server:
        run = ctx.run("llmbatch", inp_tpm, small, server=server, args=("--tpm", str(tpm)), timeout=120)
    row = run.row("tpm < one request", f"llmbatch --tpm {tpm}, max_tokens {max_tokens}")
    tokens = int(run.info.get("prompt_tokens", 0)) + int(run.info.get("completion_tokens", 0))
    row.result = (
        f"finished in {run.run_s:.1f}s; {tokens} tokens used at {tpm}/min pace "
        f"= {tokens / tpm * 60:.1f}s; estimate/request > {max_tokens}"
    )
    row.target, row.met = "completes (≤ 120 s)", run.ok
    rows.append(row)
    return rows


# --- 4. memory -------------------------------------------------------------------------


def memory(ctx: Context) -> list[Row]:
    """Peak RSS against input size, on the in-process fake provider (no server to wait on)."""
    rows: list[Row] = []
    base: float | None = None
    for n in ctx.sizes.memory_ns:
        inp = ctx.input("chat", n)
        ctx.log(f"memory: {n:,} lines")
        args = ("--provider", "fake", "--fake-latency-ms", "0")
        run = ctx.run("llmbatch-fake", inp, n, args=args, timeout=120 + n * 0.002)
        inp.unlink()
        row = run.row("memory (fake provider)", f"llmbatch, {n:,} lines")
        rss = run.measured.maxrss_mb
        if base is None:
            base = rss
            row.result = "the baseline"
        else:
            ratio = rss / base
            row.result = f"{ratio:.2f}× the {ctx.sizes.memory_ns[0]:,}-line run"
            if n >= 1_000_000:
                row.target, row.met = "≤ 1.2× and < 100 MB", ratio <= 1.2 and rss < 100
            else:
                row.target, row.met = "≤ 1.5×", ratio <= 1.5
        rows.append(row)
    return rows


# --- 5. reruns --------------------------------------------------------------------------

RERUN_LEFT = 10  # items of the output still to do (written failed by a flaky server)


def rerun(ctx: Context) -> list[Row]:
    """A rerun on a big output with a few items left: the time before its first request
    (reading the output back, the pre-pass over the input) and its memory, against the
    same rerun over a small output."""
    rows: list[Row] = []
    base: tuple[float, float] | None = None
    for n in ctx.sizes.rerun_ns:
        inp, out = ctx.tmp / f"rerun-in-{n}.jsonl", ctx.tmp / f"rerun-out-{n}.jsonl"
        summary = ctx.tmp / "rerun-summary.json"
        ctx.log(f"rerun: writing a {n:,}-line output with {RERUN_LEFT} items left")
        subprocess.run(
            [sys.executable, str(BENCH_DIR / "rerun_files.py"), str(inp), str(out), str(n), str(RERUN_LEFT)],
            check=True,
            env=ctx.env,
            timeout=1800,
        )
        first: list[float] = []
        with Server() as server:

            def poll(elapsed: float, server: Server = server, first: list[float] = first) -> None:
                if not first and _answered(server):
                    first.append(elapsed)

            argv = [sys.executable, "-m", "llmbatch", "run", str(inp), "-o", str(out), "--no-live", "-q",
                    "--summary-json", str(summary), "--base-url", server.base_url]  # fmt: skip
            ctx.log(f"rerun: {n:,} lines")
            measured = run_measured(argv, timeout=600, env=ctx.env, poll=poll)
            sent = _answered(server)
        info = orjson.loads(summary.read_bytes()) if summary.exists() else {}
        run = Run(n=n, measured=measured, info=info, check=_verify(out))
        inp.unlink()
        out.unlink()
        row = run.row("rerun, 10 items left", f"rerun over {n:,} output lines")
        phases = info.get("phases_s", {})
        to_first = first[0] if first else float("nan")
        pre = float(phases.get("pre_pass", float("nan")))
        row.result = (
            f"first request after {to_first:.1f}s (reading the output {phases.get('read_output', '?')}s, "
            f"pre-pass {pre}s), compaction {phases.get('compact', '?')}s; {sent} requests"
        )
        rss = measured.maxrss_mb
        if base is None:
            base = (rss, to_first)
        else:
            per_million = pre * 1_000_000 / n
            row.result += f"; RSS +{rss - base[0]:.0f} MB over {ctx.sizes.rerun_ns[0]:,} lines"
            row.result += f"; pre-pass {per_million:.1f}s per 1M"
            row.target = "RSS within +40 MB; pre-pass < 15 s per 1M lines"
            row.met = rss - base[0] <= 40 and per_million < 15 and sent == RERUN_LEFT
        rows.append(row)
    return rows


def _answered(server: Server) -> int:
    """API requests the server has answered (its own /_stats calls are not among them)."""
    return sum(int(v) for v in server.stats().get("by_status", {}).values())


from bench import (  # noqa: E402 (they use the Context and Row above)
    anthropic,
    cheaper,
    deadline,
    modes,
    pressure,
    report_page,
    tables,
)

SCENARIOS: dict[str, Callable[[Context], list[Row]]] = {
    "overhead": overhead,
    "latency": latency,
    "ratelimit": rate_limited,
    "memory": memory,
    "rerun": rerun,
    "drained": pressure.drained,
    "budget": pressure.budget,
    "tokens": pressure.tokens_learned,
    "oversized": pressure.oversized,
    "cpu": pressure.cpu,
    "batch": modes.batch_api,
    "ordered": modes.ordered,
    "shared": modes.shared,
    "report": report_page.report,
    "deadline": deadline.deadline,
    "escalate": cheaper.escalate,
    "promptcache": cheaper.prompt_cache,
    "anthropic": anthropic.rows,
    "tables": tables.tables,
}
