"""Metrics for Prometheus: a run pushes to a real Pushgateway (grouped by job and shard)
what its summary says at the end, the --metrics-file parses with prometheus-client's own
parser at every rewrite, and a sink that cannot be written is one warning, not a failure."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import free_port, read_jsonl, write_jsonl
from prometheus_client.parser import text_string_to_metric_families

import llmbatch.app.metrics as metrics_module

pytestmark = pytest.mark.usefixtures("no_backoff", "api_key")

PUSHGATEWAY = shutil.which("prometheus-pushgateway")
INSTALL_PUSHGATEWAY = (
    "prometheus-pushgateway is not installed: `apt-get install prometheus-pushgateway` runs the push tests"
)


class Pushgateway:
    """A prometheus-pushgateway of the test's own on a free loopback port."""

    def __init__(self) -> None:
        assert PUSHGATEWAY is not None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus-pushgateway did not start on port {self.port}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every llmbatch sample the gateway serves, by (name, sorted labels)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as answer:
            return parse(answer.read().decode())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def pushgateway() -> Iterator[Pushgateway]:
    if PUSHGATEWAY is None:
        pytest.skip(INSTALL_PUSHGATEWAY)
    gateway = Pushgateway()
    yield gateway
    gateway.stop()


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The llmbatch samples of a text exposition, parsed by prometheus-client's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("llmbatch_"):
                out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    found = [v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def rows(n: int) -> list[Any]:
    """n items: most answer at once; some are asked again, some get 429s first, one
    fails for good; and two lines are not JSON (rejects)."""
    out: list[Any] = []
    for i in range(n):
        script: dict[str, Any] = {"latency_ms": 20}
        if i % 7 == 1:
            script["bad"] = 1
        if i % 11 == 2:
            script["fail"] = [429]
        if i == 5:
            script["fail"] = [400]
        text = f"Describe item {i} in JSON.\n@fake " + orjson.dumps(script).decode()
        out.append({"id": f"r{i}", "messages": [{"role": "user", "content": text}]})
    return [*out, "not json", "{broken"]


def run(run_cli: Any, server: Any, tmp_path: Path, *flags: object, n: int = 60) -> tuple[Any, dict[str, Any]]:
    src = write_jsonl(tmp_path / "in.jsonl", rows(n))
    summary = tmp_path / "summary.json"
    result = run_cli(
        "run", src, "-o", tmp_path / "out.jsonl", "--base-url", server.base_url, "--model", "m",
        "--price-in", "1", "--price-out", "2", "--validate", "json", "--quiet", "--summary-json", summary,
        "--metrics-every", "0.1", *flags,
    )  # fmt: skip
    return result, orjson.loads(summary.read_bytes())


def assert_matches_summary(samples: dict[Any, float], summary: dict[str, Any], **labels: str) -> None:
    """The figures a user reads in the summary, as the metrics say them."""
    for state in ("valid", "invalid", "failed", "rejected", "skipped"):
        assert value(samples, "llmbatch_items_total", state=state, **labels) == summary[state], state
    assert value(samples, "llmbatch_requests_total", **labels) == summary["requests"]
    assert value(samples, "llmbatch_answers_total", **labels) == summary["answers"]
    assert value(samples, "llmbatch_http_429_total", **labels) == summary["http_429"]
    assert value(samples, "llmbatch_reasks_total", **labels) == summary["reasks"]
    for cause, n in summary["retries"].items():
        assert value(samples, "llmbatch_retries_total", cause=cause, **labels) == n
    assert value(samples, "llmbatch_tokens_total", kind="prompt", **labels) == summary["prompt_tokens"]
    assert (
        value(samples, "llmbatch_tokens_total", kind="completion", **labels) == summary["completion_tokens"]
    )
    assert value(samples, "llmbatch_cost_usd_total", **labels) == pytest.approx(summary["cost_usd"])
    assert value(samples, "llmbatch_requests_in_flight", **labels) == 0
    # Every answer was live: the histogram counts each one, under 10 s.
    assert value(samples, "llmbatch_request_latency_seconds_count", **labels) == summary["answers"]
    buckets = {
        float(dict(ls)["le"]): v
        for (n, ls), v in samples.items()
        if n == "llmbatch_request_latency_seconds_bucket" and labels.items() <= dict(ls).items()
    }
    assert buckets[10.0] == buckets[float("inf")] == summary["answers"]


def test_pushed_metrics_match_the_summary_at_the_end(run_cli, fake_server, tmp_path, pushgateway):
    """A run with --pushgateway: the gateway holds, under job and shard, the summary's
    counts, tokens, cost and exit code, and the run's start and end."""
    server = fake_server()
    before = time.time()
    result, summary = run(
        run_cli, server, tmp_path, "--pushgateway", pushgateway.url, "--metrics-job", "nightly"
    )
    assert result.exit_code == 1, result.output  # one failure, two rejects
    assert summary["failed"] == 1 and summary["rejected"] == 2 and summary["reasks"] and summary["http_429"]
    assert "warning" not in result.stderr
    samples = pushgateway.samples()
    group = {"job": "nightly", "shard": "0"}
    assert_matches_summary(samples, summary, **group)
    assert value(samples, "llmbatch_run_exit_code", **group) == 1
    start = value(samples, "llmbatch_run_start_time_seconds", **group)
    assert before <= start <= value(samples, "llmbatch_run_end_time_seconds", **group) <= time.time()
    assert value(samples, "llmbatch_run_info", **group, model="m", mode="live") == 1


def test_each_shard_is_a_group_of_its_own(run_cli, fake_server, tmp_path, pushgateway):
    """Two shards pushed to one gateway: each shard's group holds its own counts, which add
    up to the whole input."""
    server = fake_server()
    src = write_jsonl(tmp_path / "in.jsonl", rows(30)[:30])
    valid = {}
    for k in (0, 1):
        summary = tmp_path / f"summary-{k}.json"
        result = run_cli(
            "run", src, "-o", tmp_path / "out-{shard}.jsonl", "--shard", f"{k}/2", "--base-url",
            server.base_url, "--model", "m", "--quiet", "--summary-json", summary,
            "--pushgateway", pushgateway.url,
        )  # fmt: skip
        assert result.exit_code in (0, 1), result.output  # item 5 fails, in one shard or the other
        valid[k] = orjson.loads(summary.read_bytes())["valid"]
    samples = pushgateway.samples()
    for k in (0, 1):
        assert value(samples, "llmbatch_items_total", job="llmbatch", shard=str(k), state="valid") == valid[k]
    assert valid[0] + valid[1] == 29


def test_the_metrics_file_parses_at_every_rewrite(run_cli, fake_server, tmp_path, monkeypatch):
    """--metrics-file: every rewrite (many, at --metrics-every 0.1) parses with
    prometheus-client's parser, the counts only grow, and the last one matches the
    summary; no temporary file is left beside it."""
    metrics_file = tmp_path / "metrics" / "llmbatch.prom"
    metrics_file.parent.mkdir()
    seen: list[dict[Any, float]] = []
    write = metrics_module.write_to_textfile

    def write_and_read(path: str, registry: Any) -> None:
        write(path, registry)
        seen.append(parse(Path(path).read_text()))

    monkeypatch.setattr(metrics_module, "write_to_textfile", write_and_read)
    server = fake_server(latency_ms=30)
    result, summary = run(run_cli, server, tmp_path, "--metrics-file", metrics_file, "-c", "4", n=80)
    assert result.exit_code == 1, result.output
    assert len(seen) >= 5, len(seen)
    done = [
        sum(value(s, "llmbatch_items_total", state=st) for st in ("valid", "invalid", "failed")) for s in seen
    ]
    assert done == sorted(done) and done[0] < done[-1] == summary["done"]
    assert_matches_summary(seen[-1], summary)
    assert value(seen[-1], "llmbatch_run_exit_code") == 1
    assert "llmbatch_run_exit_code" not in {name for name, _ in seen[0]}  # only once it ended
    assert parse(metrics_file.read_text()) == seen[-1]
    assert sorted(p.name for p in metrics_file.parent.iterdir()) == ["llmbatch.prom"]


def test_an_unwritable_file_and_an_absent_gateway_are_one_warning_each(run_cli, fake_server, tmp_path):
    """A metrics file in a folder that does not exist and a gateway nobody listens on:
    one warning each on stderr, and the run writes every line as without them."""
    server = fake_server()
    gone = f"http://127.0.0.1:{free_port()}"
    result, summary = run(
        run_cli,
        server,
        tmp_path,
        "--metrics-file",
        tmp_path / "no" / "such" / "m.prom",
        "--pushgateway",
        gone,
    )
    assert result.exit_code == 1, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, result.stderr
    assert any("--metrics-file" in w and "m.prom" in w for w in warnings)
    assert any("--pushgateway" in w and gone in w for w in warnings)
    assert len(read_jsonl(tmp_path / "out.jsonl")) == summary["done"] == 60


def test_the_dashboard_and_the_readme_name_only_metrics_that_exist():
    """Every llmbatch_* name in docs/grafana-llmbatch.json and in the README is a metric
    (or a histogram's series) the collector exposes, and the dashboard is valid JSON."""
    from prometheus_client import CollectorRegistry, generate_latest

    from llmbatch.app.metrics import RunCollector
    from llmbatch.core.stats import Stats
    from llmbatch.cost.prices import Price
    from llmbatch.schedule.limits import Limits

    stats = Stats()
    stats.pacer = Limits(rpm=600, tpm=60_000)
    stats.batches = {"batch_1": ("completed", 3, 0, 3, time.time())}
    stats.total, stats.retries["http_503"] = 10, 1  # families that are empty until then
    collector = RunCollector(stats)
    collector.price, collector.ended_at, collector.exit_code = Price(1.0, 2.0), time.time(), 0
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    exposed = {name for name, _ in parse(generate_latest(registry).decode())}
    root = Path(__file__).resolve().parent.parent
    dashboard = (root / "docs" / "grafana-llmbatch.json").read_text()
    assert orjson.loads(dashboard)["panels"]
    for text in (dashboard, (root / "README.md").read_text()):
        named = set(re.findall(r"\bllmbatch_[a-z0-9_]*[a-z0-9]", text))
        unknown = {n for n in named if not {n, f"{n}_total", f"{n}_bucket"} & exposed}
        assert not unknown, unknown
