"""Marginal instructions per request, llmbatch against the bare client (docs/benchmarks.md,
section 6): ``(I(3,000) - I(300)) / 2,700``, counted by cachegrind in user space, so the
figure is the same whatever else the machine runs.

    python -m bench.instructions                  # this tree's llmbatch
    python -m bench.instructions --tree ../other  # another checkout's, with this venv
    python -m bench.instructions --keep DIR       # also keep cachegrind.out.* for cg_annotate

Each client runs under ``valgrind --tool=cachegrind --cache-sim=no`` against a fresh fake
server (0 ms latency, its own process, on the other core), on the same inputs and in the
same environment as the marginal CPU scenario: Batch API lines (gpt-4o-mini,
max_tokens 16), ``OPENAI_API_KEY=sk-bench``, no proxy, ``MALLOC_TOP_PAD_=1048576``.
llmbatch starts no child process, so only the Python process is counted. Needs valgrind
(``apt-get install valgrind``); a few minutes.

Each count is the least of ``--repeat`` runs (3): llmbatch starts up with work in
threads (the price lookup, counting the input's lines), and the thread switches move
its garbage collections, so in some runs (a third to a half at ccc74fc) the collector
counts ~47M more (1% of I(300), 17k on the marginal figure), never fewer; every run's
count is printed. Exit code 1 when the
ratio is over its target.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import Server, client_env, run_measured, write_input
from bench.pressure import ALLOCATOR
from bench.scenarios import API_KEY, BENCH_DIR, REPO
from bench.verify import check

N, SMALL = 3_000, 300
TARGET = 1.30  # llmbatch's marginal instructions per request, at most this many times the bare client's
CLIENTS = ("llmbatch", "bare")
_I_REFS = re.compile(r"^==\d+==\s+I\s+refs:\s+([\d,]+)", re.MULTILINE)


def _env(tree: Path) -> dict[str, str]:
    return client_env(OPENAI_API_KEY=API_KEY, PYTHONPATH=str(tree), **ALLOCATOR)


def _imported_from(tree: Path, cwd: Path) -> Path:
    """Where `python -m llmbatch` takes the package from, run as the clients are."""
    code = "import llmbatch; print(llmbatch.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(tree), cwd=cwd, capture_output=True, text=True, check=True
    )
    return Path(done.stdout.strip()).resolve()


def count(client: str, inp: Path, n: int, *, tree: Path, tmp: Path, keep: Path | None) -> int:
    """Instructions (cachegrind's I refs) of one client run over `inp`, against a fresh server."""
    out = tmp / f"out-{client}-{n}.jsonl"
    out.unlink(missing_ok=True)
    target = keep / f"cachegrind.out.{client}.{n}" if keep else Path("/dev/null")
    argv = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={target}"]
    with Server() as server:
        if client == "bare":
            argv += [sys.executable, str(BENCH_DIR / "bare_client.py"), str(inp), str(out)]
            argv += ["--url", server.url, "--concurrency", "64"]
        else:
            argv += [sys.executable, "-m", "llmbatch", "run", str(inp), "-o", str(out)]
            argv += ["--base-url", server.base_url, "--no-live", "-q", "--fresh", "--concurrency", "64"]
        # In the temporary folder: `python -m` puts the working folder first on the path.
        measured = run_measured(argv, timeout=300 + n * 0.5, env=_env(tree), cwd=tmp)
    found = _I_REFS.findall(measured.stderr)
    if measured.timed_out or measured.returncode != 0 or len(found) != 1:
        tail = measured.stderr.strip()[-2000:]
        raise RuntimeError(f"{client} at N={n}: exit {measured.returncode}, I refs {found}\n{tail}")
    c = check(str(out)) if out.exists() else {}
    if not c.get("lines") == c.get("unique") == c.get("answered") == n:
        raise RuntimeError(f"{client} at N={n}: output incomplete: {c}")
    out.unlink()
    return int(found[0].replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    summary = __doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=summary)
    parser.add_argument(
        "--tree", type=Path, default=REPO, help="the checkout whose llmbatch is run (default: this one)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per count, the least is kept (3)")
    parser.add_argument("--keep", type=Path, help="keep DIR/RUN/cachegrind.out.CLIENT.N (for cg_annotate)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    tree: Path = args.tree.resolve()
    keep: Path | None = args.keep.resolve() if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    rev = subprocess.run(
        ["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True, text=True, check=False
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="llmbatch-instr-") as folder:
        tmp = Path(folder)
        source = _imported_from(tree, tmp)
        print(f"tree: {tree} ({rev[:72] or 'not a git checkout'})\nllmbatch from: {source}", flush=True)
        if not source.is_relative_to(tree):
            print(f"llmbatch is not imported from {tree}", file=sys.stderr)
            return 2
        inputs = {n: write_input(tmp / f"chat-{n}.jsonl", n) for n in (N, SMALL)}
        refs: dict[str, dict[int, int]] = {}
        for client in CLIENTS:
            for n, inp in inputs.items():
                runs = []
                for i in range(args.repeat):
                    kept = keep / f"{i + 1}" if keep else None
                    if kept:
                        kept.mkdir(exist_ok=True)
                    runs.append(count(client, inp, n, tree=tree, tmp=tmp, keep=kept))
                print(f"  {client}, {n:,} requests: {', '.join(f'{r:,}' for r in runs)}", flush=True)
                refs.setdefault(client, {})[n] = min(runs)
    marginal = {client: (r[N] - r[SMALL]) / (N - SMALL) for client, r in refs.items()}
    ratio = marginal["llmbatch"] / marginal["bare"]
    print(f"\nthe least of {args.repeat} runs each:")
    print(f"| client | I({N}) | I({SMALL}) | marginal per request | ratio llmbatch/bare |")
    print("|---|---|---|---|---|")
    for client in CLIENTS:
        cell = f"**{ratio:.3f}×** (target ≤ {TARGET:.2f}×)" if client == "llmbatch" else "the floor"
        r = refs[client]
        print(f"| {client} | {r[N]:,} | {r[SMALL]:,} | {marginal[client] / 1000:.1f}k | {cell} |")
    met = ratio <= TARGET
    print(f"\ntarget ≤ {TARGET:.2f}× bare: {'met' if met else 'NOT MET'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
