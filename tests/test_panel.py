"""The real CLI as a user sees it: the live panel on a terminal, plain lines in a pipe,
--quiet, and a summary whose tokens and cost add up."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from llmbatch.providers.script import BAD_ANSWER, count_tokens

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
ITEMS = 128
# Slow enough that a 128-item run lasts a couple of seconds at --concurrency 16.
SLOW = ("--provider", "fake", "--fake-latency-ms", "300", "--concurrency", "16")
PRICES = ("--price-in", "2.5", "--price-out", "10")
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def cli_env(**extra: str) -> dict[str, str]:
    """The user's environment minus anything that would force or forbid colour."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    env.update(extra)
    return env


def llmbatch(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "llmbatch", "run", *map(str, args)]


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample reviews, repeated to ITEMS lines with unique ids."""
    sample = [json.loads(line) for line in (SAMPLES / "reviews.jsonl").read_text().splitlines() if line]
    path = tmp_path_factory.mktemp("input") / "reviews.jsonl"
    with path.open("w") as f:
        for i in range(ITEMS):
            item = dict(sample[i % len(sample)], id=f"R{i:04d}")
            f.write(json.dumps(item) + "\n")
    return path


def review_args(src: Path, out: Path) -> tuple[str | Path, ...]:
    return (
        src,
        "-o",
        out,
        "--template",
        SAMPLES / "review_prompt.txt",
        "--id-field",
        "id",
        "--schema",
        SAMPLES / "review.schema.json",
    )


def run_in_pty(cmd: list[str], cwd: Path, *, columns: int = 100, timeout: float = 60) -> tuple[str, str, int]:
    """Run `cmd` with stderr on a pseudo-terminal; returns (terminal output, stdout, exit code)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = cli_env(TERM="xterm-256color", COLUMNS=str(columns), LINES="40")
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer to the terminal has closed it
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            pytest.fail(f"llmbatch did not finish within {timeout}s")
        assert proc.stdout is not None
        stdout = proc.stdout.read().decode()
        code = proc.wait(timeout=10)
    finally:
        os.close(master)
        if proc.stdout is not None:
            proc.stdout.close()
    return b"".join(chunks).decode("utf-8", "replace"), stdout, code


def run_piped(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=60, check=False
    )


def output_usage(path: Path) -> tuple[int, int, list[dict[str, Any]]]:
    """Prompt and completion tokens summed over the output's responses, and the records."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    usages = [r["response"]["body"]["usage"] for r in records if r["response"]]
    return (
        sum(u["prompt_tokens"] for u in usages),
        sum(u["completion_tokens"] for u in usages),
        records,
    )


def test_live_panel_counts_up_on_a_terminal(reviews: Path, tmp_path: Path) -> None:
    """On a terminal the panel redraws in place, its done/total figure climbing to the end."""
    out = tmp_path / "out.jsonl"
    term, stdout, code = run_in_pty(llmbatch(*review_args(reviews, out), *SLOW, *PRICES), tmp_path)
    assert code == 0, term
    assert stdout == ""
    assert "\x1b[" in term  # drawn with cursor movement, not printed line after line
    text = ANSI.sub("", term)
    for label in ("llmbatch", "in flight", "req/min", "tok/min", "cost so far", "projected", "eta"):
        assert label in text
    done = {int(n.replace(",", "")) for n in re.findall(rf"(\d[\d,]*)/{ITEMS}\b", text)}
    assert len(done) >= 2, f"the panel never moved: {sorted(done)}"
    assert any(0 < n < ITEMS for n in done), f"no frame mid-run: {sorted(done)}"
    assert ITEMS in done  # the last frame shows the run complete
    assert "None" not in text
    assert "llmbatch summary" in text
    assert len(out.read_text().splitlines()) == ITEMS


def test_piped_stderr_gets_plain_progress_lines(reviews: Path, tmp_path: Path) -> None:
    """Without a terminal: periodic plain progress lines, no escape codes, nothing on stdout."""
    out = tmp_path / "out.jsonl"
    cmd = llmbatch(*review_args(reviews, out), *SLOW, "--progress-every", "0.2")
    proc = run_piped(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "\x1b" not in proc.stderr
    progress = [line for line in proc.stderr.splitlines() if line.startswith("llmbatch: ")]
    assert len(progress) >= 3, proc.stderr  # at least two on the timer, plus the final one
    assert progress[-1].startswith(f"llmbatch: {ITEMS}/{ITEMS} (100.0%)")
    assert f"written: {ITEMS} (valid {ITEMS} / invalid 0 / failed 0)" in proc.stderr


def test_quiet_shows_only_the_summary_and_its_tokens_match_the_output(reviews: Path, tmp_path: Path) -> None:
    """--quiet prints no progress, only the summary; its tokens and cost match the output file."""
    out, summary_path = tmp_path / "out.jsonl", tmp_path / "summary.json"
    cmd = llmbatch(
        *review_args(reviews, out),
        "--provider",
        "fake",
        "--quiet",
        "--progress-every",
        "0.01",
        "--summary-json",
        summary_path,
        *PRICES,
    )
    proc = run_piped(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "llmbatch: " not in proc.stderr
    assert f"written: {ITEMS} (valid {ITEMS}" in proc.stderr
    assert "cost: $" in proc.stderr
    summary = json.loads(summary_path.read_text())
    prompt, completion, _ = output_usage(out)
    assert prompt > 0 and completion > 0
    assert (summary["prompt_tokens"], summary["completion_tokens"]) == (prompt, completion)
    assert summary["cost_usd"] == pytest.approx((prompt * 2.5 + completion * 10) / 1e6)
    assert summary["price"]["input_per_mtok"] == 2.5 and summary["price"]["output_per_mtok"] == 10.0
    assert summary["price"]["source"] == "--price-in/--price-out"


def test_summary_bills_every_answered_request_while_the_output_keeps_the_last(tmp_path: Path) -> None:
    """A re-asked item's first answer is paid for: the summary counts it, the output line
    holds only the answer that was kept, and a 429 (no answer) costs no tokens."""
    src, out, summary_path = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "summary.json"
    texts = ["first", '@fake {"bad": 1}', '@fake {"fail": [429]}', "last"]
    src.write_text("".join(json.dumps({"id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    cmd = llmbatch(
        src,
        "-o",
        out,
        "--prompt",
        "Answer in JSON. {text}",
        "--id-field",
        "id",
        "--validate",
        "json",
        "--provider",
        "fake",
        "--no-live",
        "--summary-json",
        summary_path,
        *PRICES,
    )
    proc = run_piped(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["valid"] == len(texts)
    assert summary["reasks"] == 1 and summary["http_429"] == 1
    assert summary["requests"] == len(texts) + 2  # the re-ask and the rate-limited attempt

    prompt, completion, records = output_usage(out)
    reasked = next(r for r in records if r["custom_id"] == "q1")
    assert reasked["llmbatch"]["requests"] == 2
    # The re-ask resends the same prompt; the discarded answer was the fake model's prose.
    discarded_prompt = reasked["response"]["body"]["usage"]["prompt_tokens"]
    discarded_completion = count_tokens(BAD_ANSWER)
    assert summary["prompt_tokens"] == prompt + discarded_prompt
    assert summary["completion_tokens"] == completion + discarded_completion
    billed = (summary["prompt_tokens"] * 2.5 + summary["completion_tokens"] * 10) / 1e6
    assert summary["cost_usd"] == pytest.approx(billed)
    assert summary["cost_usd"] > (prompt * 2.5 + completion * 10) / 1e6


def test_plain_lines_name_a_pause_and_its_cause_while_nothing_is_in_flight(tmp_path: Path) -> None:
    """A server that answers the first requests with 429 and `Retry-After: 3`: while the
    run waits, the plain progress lines say it is paused, for how long and why, with
    nothing in flight (not a hang)."""
    from aiohttp import web

    from llmbatch.testing.server import FakeServer, error_body

    class SlowDown(FakeServer):
        refused = 0

        async def handle(self, request: web.Request) -> web.StreamResponse:
            if request.path.endswith("/chat/completions") and self.refused < 4:
                self.refused += 1
                body = error_body("Rate limit reached for requests", "requests", "rate_limit_exceeded")
                return self.reply(429, body, [("retry-after", "3")])
            return await super().handle(request)

    server = SlowDown().start()
    try:
        src = tmp_path / "in.jsonl"
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        rows = [{"custom_id": f"r{i}", "body": body} for i in range(4)]
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cmd = llmbatch(
            src, "-o", tmp_path / "out.jsonl", "--base-url", server.base_url, "--progress-every", "0.25"
        )
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env=cli_env(OPENAI_API_KEY="sk-test"))  # fmt: skip
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    paused = [line for line in done.stderr.splitlines() if "paused" in line]
    assert paused, done.stderr
    assert any(
        "in flight 0" in line and re.search(r"paused \d+ s \(429, Retry-After\)", line) for line in paused
    )
