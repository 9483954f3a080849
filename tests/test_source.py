"""The one pass over the input: pipes, FIFOs, standard input and compressed files are
read whole and once; blank lines and a BOM are not rejects; a mistake every row makes
is one usage error before anything is sent."""

from __future__ import annotations

import gzip
import os
import subprocess
import threading
from pathlib import Path

import orjson
import pytest
import zstandard
from conftest import PYTHON, SAMPLES, read_jsonl, write_jsonl

from llmbatch.core.errors import ConfigError, InputError
from llmbatch.core.values import Request
from llmbatch.input.build import RequestBuilder, Template
from llmbatch.input.source import Source

TEMPLATE = ["--template", SAMPLES / "review_prompt.txt", "--id-field", "id"]
N_REVIEWS = 24


def rows(n: int) -> list[dict[str, object]]:
    return [{"custom_id": f"r{i}", "body": {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}}
            for i in range(n)]  # fmt: skip


def jsonl_bytes(items: list[dict[str, object]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in items)


def ids(path: Path) -> list[str]:
    return sorted(r["custom_id"] for r in read_jsonl(path))


def test_fifo_input_is_read_once_whole(run_cli, tmp_path):
    """A named pipe: every line processed once (the spool serves later passes)."""
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    data = jsonl_bytes(rows(300) + rows(1))  # the last line repeats r0: a duplicate
    writer = threading.Thread(target=lambda: fifo.write_bytes(data))
    writer.start()
    out = tmp_path / "out.jsonl"
    result = run_cli("run", fifo, "-o", out, "--provider", "fake", "--fake-latency-ms", "0", "--no-live")
    writer.join()
    assert result.exit_code == 1, result.output  # the duplicate is a reject
    assert ids(out) == sorted(f"r{i}" for i in range(300))
    rejects = read_jsonl(tmp_path / "out.jsonl.rejects.jsonl")
    assert [r["line"] for r in rejects] == [301]
    assert "duplicate custom_id 'r0' (line 1 has it)" in rejects[0]["error"]


def test_dash_reads_standard_input_from_a_pipe(tmp_path):
    """`cat in.jsonl | llmbatch run - ...`: every line once, stdout stays empty."""
    out = tmp_path / "out.jsonl"
    cmd = [
        PYTHON,
        "-m",
        "llmbatch",
        "run",
        "-",
        "-o",
        str(out),
        "--provider",
        "fake",
        "--no-live",
        *map(str, TEMPLATE),
    ]
    proc = subprocess.run(
        cmd, input=(SAMPLES / "reviews.jsonl").read_bytes(), capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    assert len(ids(out)) == N_REVIEWS


def test_dev_stdin_reads_the_pipe_too(tmp_path):
    """/dev/stdin (what process substitution and `cat |` give) is not an empty file."""
    out = tmp_path / "out.jsonl"
    cmd = [PYTHON, "-m", "llmbatch", "run", "/dev/stdin", "-o", str(out), "--provider", "fake", "--no-live",
           *map(str, TEMPLATE)]  # fmt: skip
    proc = subprocess.run(
        cmd, input=(SAMPLES / "reviews.jsonl").read_bytes(), capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(ids(out)) == N_REVIEWS


@pytest.mark.parametrize("kind", ["gz", "zst"])
def test_compressed_input_is_decompressed(run_cli, tmp_path, kind):
    """`in.jsonl.gz` and `in.jsonl.zst`: every line once, no 'not valid UTF-8' rejects."""
    raw = (SAMPLES / "reviews.jsonl").read_bytes()
    src = tmp_path / f"in.jsonl.{kind}"
    src.write_bytes(gzip.compress(raw) if kind == "gz" else zstandard.ZstdCompressor().compress(raw))
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, "--provider", "fake", "--no-live", *TEMPLATE)
    assert result.exit_code == 0, result.output
    assert len(ids(out)) == N_REVIEWS
    assert not (tmp_path / "out.jsonl.rejects.jsonl").exists()


def test_a_trailing_blank_line_and_a_bom_exit_0_every_night(run_cli, tmp_path):
    """A file that starts with a UTF-8 BOM and ends in a blank line is not a failure:
    exit 0, on the first run and on the rerun (cron sees green)."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + jsonl_bytes(rows(5)) + b"\n  \n")
    out = tmp_path / "out.jsonl"
    for _ in range(2):
        result = run_cli(
            "run", src, "-o", out, "--provider", "fake", "--no-live", "--summary-json", tmp_path / "s.json"
        )
        assert result.exit_code == 0, result.output
    assert ids(out) == [f"r{i}" for i in range(5)]
    summary = orjson.loads((tmp_path / "s.json").read_bytes())
    assert (summary["blank"], summary["rejected"], summary["skipped"]) == (2, 0, 5)


SETUP_MISTAKES = [
    pytest.param([*TEMPLATE], "no model", id="template-and-no-model"),
    pytest.param(
        ["--prompt", "Rate: {stars}", "--id-field", "id", "-m", "m"],
        "missing template field: stars",
        id="template-field-no-row-has",
    ),
    pytest.param(
        ["--template", SAMPLES / "review_prompt.txt", "--id-field", "review_id", "-m", "m"],
        "missing id field 'review_id'",
        id="wrong-id-field",
    ),
]


@pytest.mark.parametrize(("flags", "message"), SETUP_MISTAKES)
def test_a_mistake_every_row_makes_is_exit_2_before_anything_is_sent(
    run_cli, fake_server, api_key, tmp_path, flags, message
):
    """No model anywhere, a template field or an id field no row has: one clear line,
    exit 2, the server saw nothing and no output was made."""
    server = fake_server()
    out = tmp_path / "out.jsonl"
    result = run_cli("run", SAMPLES / "reviews.jsonl", "-o", out, "--base-url", server.base_url, *flags)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "nothing was sent" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert server.stats.requests == 0
    assert not out.exists()


@pytest.mark.parametrize(("flags", "message"), SETUP_MISTAKES)
def test_estimate_refuses_the_same_mistakes(run_cli, flags, message):
    """`estimate` judges the input as `run` does: exit 2, not '24 would be rejected'."""
    result = run_cli("estimate", SAMPLES / "reviews.jsonl", *flags)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_rows_that_differ_stay_per_row_rejects(run_cli, tmp_path):
    """Only a mistake every row makes is a usage error: a few rows missing a field are
    rejects, the rest run."""
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"id": i, "text": f"t{i}"} if i % 3 else {"id": i} for i in range(12)]
    )
    out = tmp_path / "out.jsonl"
    result = run_cli(
        "run", src, "-o", out, "--provider", "fake", "--prompt", "Say {text}", "--id-field", "id"
    )
    assert result.exit_code == 1, result.output
    assert len(read_jsonl(out)) == 8
    assert len(read_jsonl(tmp_path / "out.jsonl.rejects.jsonl")) == 4


def test_a_pipe_is_spooled_for_the_second_pass(tmp_path):
    """A non-seekable input is read once; the duplicate check's second pass reads the
    spool, and a duplicate is still found exactly."""
    r, w = os.pipe()
    data = jsonl_bytes(rows(50) + rows(3))
    os.write(w, data)
    os.close(w)
    source = Source(f"/dev/fd/{r}", RequestBuilder())
    assert not source.rereadable
    out = list(source.requests())
    os.close(r)
    source.close()
    sent = [x.custom_id for x in out if isinstance(x, Request)]
    rejected = [x.line for x in out if isinstance(x, InputError)]
    assert sorted(sent) == sorted(f"r{i}" for i in range(50))
    assert rejected == [51, 52, 53]


def test_preflight_keeps_the_lines_it_read_ahead(tmp_path):
    """The preflight reads ahead from a pipe; those lines are still processed."""
    r, w = os.pipe()
    os.write(w, jsonl_bytes(rows(30)))
    os.close(w)
    source = Source(f"/dev/fd/{r}", RequestBuilder())
    first = source.preflight()
    assert first.model == "m"
    assert first.first_item is not None and first.first_item["custom_id"] == "r0"
    got = [x.custom_id for x in source.requests() if isinstance(x, Request)]
    os.close(r)
    source.close()
    assert got == [f"r{i}" for i in range(30)]


def test_preflight_only_judges_mistakes_of_the_command(tmp_path):
    """Rows that are all garbage are rejects (the data's fault), not a usage error;
    rows that all lack the template's field are the command's fault."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"not json\n" * 20)
    garbage = Source(src, RequestBuilder())
    garbage.preflight()  # no error: 20 rejects will follow
    garbage.close()
    write_jsonl(src, [{"id": i} for i in range(20)])
    wrong = Source(src, RequestBuilder(template=Template("{text}"), model="m"))
    with pytest.raises(ConfigError, match="all of the first 10 items"):
        wrong.preflight()
    wrong.close()
