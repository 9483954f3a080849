"""The Anthropic provider's benchmarks (issue 25), against the fake Anthropic API in a
process of its own (`python -m llmbatch.testing.anthropic`):

- live: 2,000 templated items with a schema under 600 requests and 40,000 input tokens
  a minute, announced only in the anthropic-ratelimit-* headers (Anthropic's buckets:
  a minute's worth, full at the start): at most 1% 429s beyond the first --concurrency
  requests, wall time within 1.15x of the binding limit's ideal (what the full buckets
  hold goes at once, the rest at the refill rate);
- a 529 storm (30% of requests for the first minute) on the same run: no item lost, the
  pace never cut (pace_cuts 0), the same 1.15x.

    python -m bench --only anthropic     # the same rows in make bench's table
    python -m bench.anthropic            # both rows, about five minutes
    python -m bench.anthropic --quick    # ten times the rates, a tenth of the buckets: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from llmbatch.testing.reviews import REVIEW_SCHEMA as SCHEMA

if TYPE_CHECKING:
    from bench.scenarios import Context, Row

KEY = "sk-ant-bench"
CONCURRENCY = 32


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def run(tmp: Path, n: int, rpm: float, itpm: float, bucket: float, extra: list[str]) -> dict:  # type: ignore[type-arg]
    port = _port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llmbatch.testing.anthropic", "--port", str(port), "--rpm", str(rpm),
         "--itpm", str(itpm), "--bucket-seconds", str(bucket), *extra],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        server.stdout.readline()  # listening
        inp = tmp / "in.jsonl"
        words = "the battery lasts two days and the screen is bright enough outside " * 3
        with inp.open("w") as f:
            for i in range(n):
                f.write(json.dumps({"id": f"r{i}", "text": f"review {i}: {words}"}) + "\n")
        schema = tmp / "s.json"
        schema.write_text(json.dumps(SCHEMA))
        out, summary = tmp / f"out-{port}.jsonl", tmp / f"summary-{port}.json"
        env = {**os.environ, "ANTHROPIC_API_KEY": KEY}
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "llmbatch", "run", str(inp), "-o", str(out), "--provider", "anthropic",
             "--base-url", f"http://127.0.0.1:{port}", "-m", "claude-haiku-4-5", "--prompt", "Rate: {text}",
             "--id-field", "id", "--schema", str(schema), "-c", str(CONCURRENCY), "-q", "--summary-json",
             str(summary)],
            env=env, check=False,
        )  # fmt: skip
        wall = time.monotonic() - started
        stats = _get(f"http://127.0.0.1:{port}/_stats")
    finally:
        server.terminate()
        server.wait(10)
    ids = [json.loads(line)["custom_id"] for line in out.open()]
    data = json.loads(summary.read_text())
    prompt = data["prompt_tokens"] / n  # every request's input tokens (no cache here)
    # The ideal: what the full buckets hold goes at once, the rest at the refill rate.
    held = bucket / 60  # of a minute's budget, what the full buckets hold
    ideal = max((n - rpm * held) / rpm * 60, (n * prompt - itpm * held) / itpm * 60, 0.0)
    beyond = max(0, stats["http_429"] - CONCURRENCY)
    return {
        "n": n,
        "ids_once": len(ids) == len(set(ids)) == n,
        "valid": data["valid"],
        "wall_s": round(wall, 1),
        "ideal_s": round(ideal, 1),
        "run_s": data["elapsed_s"],  # the run itself, without the interpreter's start
        "ratio": round(data["elapsed_s"] / ideal, 3) if ideal else None,
        "http_429": stats["http_429"],
        "beyond_first_burst": f"{beyond / n:.2%}",
        "http_529": stats["http_529"],
        "pace_cuts": data["pace_cuts"],
    }


N = 2000


def _plan(scale: int) -> tuple[float, float, float, dict[str, tuple[str, list[str]]]]:
    """(rpm, input tpm, bucket seconds, rows by key) at `scale` times the rates."""
    storm = ["--overload-share", "0.3", "--overload-seconds", str(60 / scale)]
    rows = {"live": ("live, limits in headers", []), "storm": ("live, 529 storm 30% for a minute", storm)}
    return 600.0 * scale, 40_000.0 * scale, 60 / scale, rows


def _met(result: dict) -> bool:  # type: ignore[type-arg]
    return bool(
        result["ids_once"]
        and result["ratio"] is not None
        and result["ratio"] <= 1.15
        and float(result["beyond_first_burst"].rstrip("%")) <= 1.0
        and result["pace_cuts"] == 0
    )


def rows(ctx: Context) -> list[Row]:
    """The rows of `make bench` (`--only anthropic`): both runs, ten times the rates and a
    tenth of the buckets with --quick."""
    from bench.scenarios import QUICK, Row

    rpm, itpm, bucket, plan = _plan(10 if ctx.sizes is QUICK else 1)
    out = []
    for label, extra in plan.values():
        ctx.log(f"Claude: {label}")
        result = run(ctx.tmp, N, rpm, itpm, bucket, extra)
        row = Row(
            scenario=f"Claude live, {rpm:,.0f} req/min + {itpm:,.0f} input tok/min in headers",
            run=label,
            n=N,
            wall_s=result["wall_s"],
            run_s=result["run_s"],
            http_429=result["http_429"],
            output=f"{N:,} ids once" if result["ids_once"] else "ids missing or twice",
            ok=result["ids_once"],
        )
        row.result = (
            f"{result['ratio']}× the binding limit's {result['ideal_s']:.0f}s; 429s {result['http_429']} "
            f"({result['beyond_first_burst']} beyond the first burst), 529s {result['http_529']}, "
            f"pace cuts {result['pace_cuts']}"
        )
        row.target = "≤ 1.15×, ≤ 1% 429s beyond the first burst, no pace cut"
        row.met = _met(result)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.anthropic")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("live", "storm"))
    args = parser.parse_args(argv)
    rpm, itpm, bucket, plan = _plan(10 if args.quick else 1)
    with tempfile.TemporaryDirectory() as tmp:
        for key, (label, extra) in plan.items():
            if args.only and key != args.only:
                continue
            result = run(Path(tmp), N, rpm, itpm, bucket, extra)
            print(
                f"{label} ({rpm:,.0f} req/min, {itpm:,.0f} input tok/min): {json.dumps(result)} "
                f"met={_met(result)}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
