"""`make bench`: throughput, latency, rate-limit and memory benchmarks against the fake
OpenAI-compatible server on loopback.

    python -m bench                      # everything: about 12 minutes on 2 cores
    python -m bench --quick              # small N, a smoke check (1-2 minutes)
    python -m bench --only overhead      # one scenario (comma-separate several)

The server runs in its own process on one core, each client in its own process on the
other, one client at a time. One table of results and ratios is printed; the same goes
to bench/results/latest.md. See docs/benchmarks.md for figures and how to read them.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from bench.harness import CLIENT_CORES, SERVER_CORES
from bench.scenarios import BENCH_DIR, FULL, QUICK, SCENARIOS, Context, Row

COLUMNS = (
    "scenario",
    "run",
    "N",
    "wall s",
    "run s",
    "req/s",
    "CPU ms/req",
    "marginal ms/req",
    "peak RSS MB",
    "server CPU",
    "429s",
    "output",
    "result",
    "target",
    "met",
)


def _num(x: float | None, digits: int = 2) -> str:
    if x is None or math.isnan(x):
        return "—"
    return f"{x:,.{digits}f}"


def _cells(row: Row) -> list[str]:
    met = {True: "yes", False: "**NO**", None: ""}[row.met]
    output = row.output if row.ok else f"**{row.output}**"
    return [
        row.scenario,
        row.run,
        f"{row.n:,}",
        _num(row.wall_s),
        _num(row.run_s),
        _num(row.rps, 0),
        _num(row.cpu_ms, 3),
        _num(row.marginal_ms, 3),
        _num(row.rss_mb, 1),
        "—" if row.server_cpu is None else f"{row.server_cpu:.0%}",
        "—" if row.http_429 is None else f"{row.http_429:,}",
        output,
        row.result,
        row.target,
        met,
    ]


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for package in ("llmbatch", "openai", "aiohttp", "orjson"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} ?")
    pinning = (
        f"clients on core {sorted(CLIENT_CORES)}, server on core {sorted(SERVER_CORES)}"
        if CLIENT_CORES and SERVER_CORES
        else "not pinned (fewer than 2 cores available)"
    )
    return (
        f"{os.cpu_count()} cores ({model or platform.processor() or '?'}), Linux {platform.release()}, "
        f"Python {platform.python_version()}; {', '.join(versions)}; {pinning}"
    )


def tree() -> str:
    """The commit measured, and whether the package had uncommitted changes (read-only git)."""
    repo = BENCH_DIR.parent
    try:
        head = _git(repo, "rev-parse", "--short", "HEAD").strip()
        dirty = _git(repo, "status", "--porcelain", "--", "llmbatch").splitlines()
    except (OSError, subprocess.SubprocessError):
        return "tree: unknown"
    if not head:
        return "tree: unknown"
    return f"tree: {head}" + (f" with {len(dirty)} uncommitted file(s) in llmbatch/" if dirty else "")


def _git(repo: Path, *args: str) -> str:
    # --no-optional-locks: `status` must not refresh (write) the index of a tree others work in.
    argv = ["git", "--no-optional-locks", *args]
    return subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=10).stdout


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `with Server()` blocks: nothing is left running


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N: a smoke check of 1-2 minutes")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios: {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "latest.md")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    signal.signal(signal.SIGTERM, _terminate)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    sizes = QUICK if args.quick else FULL
    rows: list[Row] = []
    failures: list[str] = []
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="llmbatch-bench-") as tmp:
        ctx = Context(Path(tmp), sizes, log)
        for name in names:
            try:
                rows += SCENARIOS[name](ctx)
            except Exception as exc:  # one broken scenario must not hide the others' figures
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                log(f"{name} failed: {exc}")
    elapsed = time.monotonic() - started
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    failures += [f"{r.scenario} / {r.run}: output {r.output}" for r in rows if not r.ok]

    parent_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = "\n".join(
        [
            f"# llmbatch benchmarks ({'quick' if args.quick else 'full'})",
            "",
            f"{datetime.datetime.now().isoformat(timespec='seconds')}, {elapsed:.0f}s in all ({load}).",
            f"{machine()}; {tree()}.",
            "",
            table(rows),
            "",
            "wall s: the client process, start-up included. run s: inside it (llmbatch's `elapsed_s`,",
            "the scripts' own clock), which req/s uses. CPU ms/req: the process's user+system CPU over N,",
            "start-up included; marginal: (CPU(N) − CPU(N/100)) / (N − N/100), start-up excluded.",
            "server CPU: the server's CPU over the client's wall time (100% = its core is saturated).",
            f"This process peaked at {parent_rss:.0f} MB: a child's peak RSS cannot read lower",
            "(Linux carries the parent's size into a child's ru_maxrss at fork).",
            *(["", "## Failures", "", *[f"- {f}" for f in failures]] if failures else []),
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    print(report)
    print(f"written to {args.out}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
