"""`llmbatch report --html`: one page that opens from disk with no network, checked in a
real browser (Debian's chromium, headless, through the DevTools protocol): every section
there with the text report's numbers, every chart drawn, no request made, no script
error, hostile answers shown as text; older lines without a finish time; the extra
missing is exit 2 with the install line."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import ROOT, write_jsonl
from typer.testing import CliRunner

from llmbatch.app.cli import app
from llmbatch.app.page import INSTALL, SECTIONS
from llmbatch.core import retry
from llmbatch.files import sidecars
from llmbatch.testing.browser import Look, find_browser, look
from llmbatch.testing.server import FakeServer

pytestmark = pytest.mark.usefixtures("no_backoff")

ITEMS = 20_000
IN_BATCHES = 600  # of those, answered through the Batch API
CHARTS = {"timeline", "latency", "cost", "reasks", "batches"}
OLD_OUTPUTS = sorted((ROOT / "tests" / "data" / "main_outputs").glob("*.out.jsonl"))


def _browser() -> None:
    if find_browser() is None:
        pytest.skip("no browser: the page tests need Debian's chromium (apt-get install chromium)")


def seen(page: Path, **kwargs: Any) -> Look:
    _browser()
    return asyncio.run(look(page, **kwargs))


def body(i: int, model: str, script: dict[str, Any]) -> dict[str, Any]:
    text = f"Item {i}: @fake " + orjson.dumps(script).decode()
    return {"model": model, "messages": [{"role": "user", "content": text}], "metadata": {"id": f"q{i}"}}


def script_for(i: int) -> dict[str, Any]:
    """Most answer well; some are refused, fail (400), stay invalid after three
    answers, need a re-ask, or a retry after a 503."""
    if i % 97 == 0:
        return {"fail": [400]}
    if i % 71 == 0:
        return {"refuse": "I will not rate this."}
    if i % 53 == 0:
        return {"bad": 9}
    if i % 11 == 0:
        return {"bad": 1, "answer": {"n": i}}
    if i % 31 == 0:
        return {"fail": [503], "answer": {"n": i}}
    return {"answer": {"n": i}}


def invoke(*args: object) -> Any:
    env = {"OPENAI_API_KEY": "sk-test-report-html", "OPENAI_BASE_URL": None}
    return CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20,000-line output of two models: 600 items through the Batch API (some
    re-asked in a follow-up batch), then the rest live with every kind of outcome."""
    folder = tmp_path_factory.mktemp("mixed")
    out = folder / "out.jsonl"
    batch = write_jsonl(
        folder / "batch.jsonl",
        (body(i, "gpt-4o-mini", {"bad": 1, "answer": {"n": i}} if i % 7 == 0 else {"answer": {"n": i}})
         for i in range(IN_BATCHES)),
    )  # fmt: skip
    live = write_jsonl(
        folder / "live.jsonl",
        (body(i, "gpt-4o" if i % 3 == 0 else "gpt-4o-mini", script_for(i)) for i in range(IN_BATCHES, ITEMS)),
    )
    common = ("--validate", "json", "--no-live")
    with retry.no_backoff(), FakeServer() as server:
        first = invoke("run", batch, "-o", out, "--batch-api", "--base-url", server.base_url, *common,
                       "--poll-every", "0.05", "--batch-requests", "200")  # fmt: skip
        assert first.exit_code == 0, first.output
        second = invoke("run", live, "-o", out, "--base-url", server.base_url, *common, "--max-requests", "3",
                        "-c", "128")  # fmt: skip
        assert second.exit_code == 1, second.output  # some items are invalid or failed
    return out


@pytest.fixture(scope="module")
def page(mixed: Path) -> tuple[Path, dict[str, Any]]:
    """The page of the mixed output, and the text report's figures (--json) of it."""
    target = mixed.with_name("report.html")
    made = invoke("report", mixed, "--html", target)
    assert made.exit_code == 0, made.output
    assert made.stdout.startswith("files:")  # the text report still goes to stdout
    assert "finished:" in made.stdout and "per item:     1 answer: " in made.stdout  # its new figures
    text = invoke("report", mixed, "--json")
    return target, orjson.loads(text.stdout)


def test_every_section_is_there_with_the_text_reports_numbers(page):
    """Summary, over time, latency, cost, re-asks, failures, batches: each present; the
    header's counts are the text report's; the top failures show examples with their
    input lines; the batches have times from the batch record; the file is under 10 MB."""
    target, text = page
    html = target.read_text()
    assert target.stat().st_size < 10_000_000
    assert sorted(p.name for p in target.parent.glob("out.jsonl.*")) == ["out.jsonl.batches.db"]  # no -wal
    for sid, _ in SECTIONS:
        assert f'data-section="{sid}"' in html
    assert text["lines"] == ITEMS and text["answered_via"]["batch"] == IN_BATCHES
    assert text["invalid"] and text["failed"] and text["refused"]
    for name in ("ids", "lines", "valid", "invalid", "failed"):
        assert re.search(rf'data-count="{name}">{text[name]:,}<', html), name
    for reason in text["invalid_reasons"]:
        assert reason[:40].replace("'", "&#x27;") in html
    assert re.search(r"input line \d+", html)
    figures = orjson.loads(re.search(r'id="figures">(.*?)</script>', html, re.S)[1])  # type: ignore[index]
    assert set(figures) == CHARTS
    bars = figures["batches"]["data"][0]
    assert len(bars["y"]) >= 3 and all(ms > 0 for ms in bars["x"])  # created -> completed, per batch
    models = {t["name"].split(" (")[0] for t in figures["latency"]["data"]}
    assert models == {"gpt-4o", "gpt-4o-mini"}


def test_the_page_renders_in_a_browser_and_asks_the_network_nothing(page):
    """Headless chromium with the network blocked: no request beyond the file, no
    console error, every chart drawn at a real size, the counts as the text report's,
    and a screenshot that is not blank."""
    target, text = page
    found = seen(target, height=1000)
    assert found.requests == [] and found.errors == []
    assert found.sections == [sid for sid, _ in SECTIONS]
    assert {c["name"] for c in found.charts} == CHARTS
    for chart in found.charts:
        assert chart["svgs"] and chart["marks"], chart
        assert min(chart["size"]) > 150 and min(chart["plot"]) > 150, chart
    assert found.counts["valid"] == f"{text['valid']:,}" and found.counts["failed"] == f"{text['failed']:,}"
    assert found.screenshot.startswith(b"\x89PNG") and found.colours > 20
    (target.parent / "report.png").write_bytes(found.screenshot)


def test_hostile_answers_are_shown_as_text_and_run_nothing(run_cli, fake_server, api_key, tmp_path):
    """Answers holding <script>, </div>, quotes and a megabyte, and a model named like
    markup: the page shows them as text (cut short), runs none of them, and stays small."""
    hostile = [
        "<script>window.pwned = 1</script>",
        '</div></section><img src=x onerror="window.pwned = 2">',
        "\"'`</script><script>window.pwned = 3</script>",
        "A" * 1_000_000 + "<script>window.pwned = 4</script>",
    ]
    rows = [{"model": "<b onmouseover=alert(1)>m</b>", "messages": [
        {"role": "user", "content": "@fake " + orjson.dumps({"answer": answer}).decode()}],
        "metadata": {"id": f"h{i}</td>"}} for i, answer in enumerate(hostile)]  # fmt: skip
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    server = fake_server()
    ran = run_cli("run", src, "-o", out, "--base-url", server.base_url, "--validate", "json",
                  "--max-requests", "1", "--no-live")  # fmt: skip
    assert ran.exit_code == 1, ran.output
    target = tmp_path / "r.html"
    assert run_cli("report", out, "--html", target).exit_code == 0
    assert target.stat().st_size < 6_000_000  # the megabyte answer is cut
    html = target.read_text()
    assert "pwned = 1</script>" not in html and "<img src=x" not in html and "<b onmouseover" not in html
    found = seen(target, evaluate="window.pwned === undefined")
    assert found.value is True and found.errors == [] and found.requests == []
    assert found.scripts == 3  # the data block and the page's two scripts, no more
    assert "<script>window.pwned = 1</script>" in found.text
    assert '</div></section><img src=x onerror="window.pwned = 2">' in found.text
    assert "<b onmouseover=alert(1)>m</b>" in found.text and "h0</td>" in found.text


def test_older_lines_without_a_finish_time_read_and_say_so(run_cli, mixed, tmp_path):
    """Outputs an older llmbatch wrote (no `t`) are reported: the text and the page say
    their timeline is unknown; beside a new output they are counted, and its own minutes
    drawn."""
    text = run_cli("report", *OLD_OUTPUTS)
    assert text.exit_code == 0 and "timeline unknown" not in text.stdout
    assert "unknown (no line carries its finish time)" in text.stdout
    alone = tmp_path / "old.html"
    assert run_cli("report", *OLD_OUTPUTS, "--html", alone).exit_code == 0
    assert "timeline unknown" in alone.read_text() and 'data-chart="timeline"' not in alone.read_text()
    both = tmp_path / "both.html"
    shown = run_cli("report", mixed, *OLD_OUTPUTS, "--html", both)
    assert shown.exit_code == 0
    assert "lines without a finish time (an older llmbatch): timeline unknown" in shown.stdout
    found = seen(both)
    assert found.errors == [] and "timeline" in {c["name"] for c in found.charts}
    assert "are not drawn" in found.text


def test_without_a_batch_record_the_batches_are_listed_by_id(run_cli, mixed, tmp_path):
    """An output copied away from its batch record: its batches are listed by id; the
    two files together are two series over time."""
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(mixed.read_bytes())
    assert not sidecars.batches(copy).exists()
    target = tmp_path / "r.html"
    assert run_cli("report", copy, "--html", target).exit_code == 0
    html = target.read_text()
    assert "batch ids only" in html and 'data-chart="batches"' not in html
    assert len(re.findall(r"<li><code>batch_", html)) >= 3
    sidecars.batches(copy).write_bytes(b"not a database")
    assert run_cli("report", copy, "--html", target).exit_code == 0  # a broken record: ids only
    assert "Not readable as a batch record" in target.read_text()
    both = tmp_path / "both.html"
    assert run_cli("report", mixed, copy, "--html", both).exit_code == 0
    figures = orjson.loads(re.search(r'id="figures">(.*?)</script>', both.read_text(), re.S)[1])  # type: ignore[index]
    series = [t["name"].rsplit("/", 1)[-1] for t in figures["timeline"]["data"] if t["showlegend"]]
    assert series == ["out.jsonl", "copy.jsonl"]  # one series per file, named by its path's end


def test_the_page_can_go_to_stdout(run_cli, mixed):
    """--html - writes the page, and only the page, on standard output."""
    result = run_cli("report", mixed, "--html", "-")
    assert result.exit_code == 0
    assert result.stdout.startswith("<!doctype html>") and result.stdout.rstrip().endswith("</html>")
    assert "files:" not in result.stdout


def test_without_the_report_extra_html_is_exit_2_with_the_install_line(run_cli, mixed, monkeypatch, tmp_path):
    """No plotly: exit 2 before reading anything, naming the install line; no file."""
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.offline", None)
    target = tmp_path / "r.html"
    result = run_cli("report", mixed, "--html", target)
    assert result.exit_code == 2
    assert INSTALL in result.stderr and not target.exists()
