"""Bad input never costs a good line and never crashes a run: every bad line is one
reject naming its line and what is wrong; problems a user can fix before anything is
sent stop the run at once (exit 2, one clear line, no request)."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from llmbatch.app.cli import app
from llmbatch.testing.server import FakeServer

KEY = "sk-bad-input-test-9c8b7a6f5e4d"
FAKE = ("--provider", "fake", "--fake-latency-ms", "0", "--no-live", "-q")
MB10 = 10 * 1024 * 1024


def good(cid: str, text: str = "hello") -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body})


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """`cli(*args)`: `llmbatch run ARGS` in-process, from an empty working directory."""
    monkeypatch.chdir(tmp_path)

    def invoke(*args: object, key: str | None = KEY) -> Result:
        argv = ["run", *(a if isinstance(a, str) else os.fspath(a) for a in args)]
        env = {"OPENAI_API_KEY": key, "OPENAI_BASE_URL": None}
        return CliRunner().invoke(app, argv, env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def server() -> Iterator[Callable[..., FakeServer]]:
    started: list[FakeServer] = []

    def start(cls: type[FakeServer] = FakeServer, **kwargs: Any) -> FakeServer:
        s = cls(**kwargs).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


# --- one reject per bad line ----------------------------------------------------------

BAD_LINES: list[tuple[bytes, str]] = [
    (b"this is not json", "not JSON"),
    (b'{"custom_id": "cut", "body": {"messages": [', "not JSON"),
    (b"[1, 2, 3]", "not a JSON object (got list)"),
    (b'"just a string"', "not a JSON object (got str)"),
    (b"42", "not a JSON object (got int)"),
    (b"null", "not a JSON object (got NoneType)"),
    (b'{"custom_id": "bad-\xff\xfe", "body": {"messages": []}}', "not valid UTF-8"),
    (b"\xc3\x28 latin-1 caf\xe9", "not valid UTF-8"),
    (b"\x00\x00\x00", "not JSON"),
    (b"[" * 5000, "not JSON"),
    (b'{"x": "\\ud800"}', "not JSON"),
    (b'{"temperature": 1e999, "messages": []}', "not JSON"),
    (b'{"hello": "world"}', "not a request"),
    (
        b'{"custom_id": "e1", "method": "POST", "url": "/v1/completions-typo", "body": {"messages": []}}',
        "unknown endpoint '/v1/completions-typo'",
    ),
    (b'{"custom_id": "e2", "url": 7, "body": {"messages": []}}', "unknown endpoint 7"),
    (b'{"custom_id": "m1", "method": "GET", "body": {"messages": []}}', "unsupported method 'GET'"),
    (b'{"custom_id": "b1", "body": [1]}', "body must be a JSON object"),
    (b'{"custom_id": "", "body": {"messages": []}}', "custom_id must be a non-empty string"),
    (b'{"custom_id": 12, "body": {"messages": []}}', "custom_id must be a non-empty string"),
    (b'{"custom_id": "c1", "body": {"model": "m", "messages": "hi"}}', 'without a "messages" list'),
]


BLANK_LINES = [b"", b"   \t  "]


def test_each_bad_line_is_one_reject_naming_its_line_and_reason(cli, tmp_path):
    """Twenty-odd kinds of bad line between good ones: each is one reject with its line
    number and reason, every good line is answered once, and the run says exit 1. Blank
    lines among them are passed over and counted, not rejected."""
    lines: list[bytes] = []
    expected: dict[int, str] = {}
    good_ids: list[str] = []
    for i, (raw, reason) in enumerate(BAD_LINES):
        lines.append(good(f"g{i}"))
        good_ids.append(f"g{i}")
        lines.append(raw)
        expected[len(lines)] = reason
        if i < len(BLANK_LINES):
            lines.append(BLANK_LINES[i])
    lines.append(good("last") + b"\r")  # a CRLF file's line is a good line
    good_ids.append("last")
    src = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"

    result = cli(src, "-o", out, *FAKE, "--summary-json", tmp_path / "s.json")

    assert result.exit_code == 1, result.output
    rejects = read_jsonl(tmp_path / "out.jsonl.rejects.jsonl")
    got = {r["line"]: r["error"] for r in rejects}
    assert len(rejects) == len(got) == len(expected)
    for line, reason in expected.items():
        assert reason in got[line], (line, got[line])
    records = read_jsonl(out)
    assert sorted(r["custom_id"] for r in records) == sorted(good_ids)
    assert all(r["llmbatch"]["valid"] for r in records)
    summary = orjson.loads((tmp_path / "s.json").read_bytes())
    assert (summary["done"], summary["rejected"], summary["blank"], summary["total"]) == (
        len(good_ids),
        len(expected),
        len(BLANK_LINES),
        len(lines),
    )
    assert "rejected lines are listed in" in result.stderr


def test_a_rerun_lists_each_bad_line_once_and_a_fixed_input_clears_them(cli, tmp_path):
    """Rerunning (a resume) does not list a bad line twice; after the bad lines are
    fixed, a rerun answers them and the stale rejects file is gone."""
    src = write_lines(tmp_path / "in.jsonl", [good("a"), b"oops", good("b"), b"[]"])
    out = tmp_path / "out.jsonl"
    rejects = tmp_path / "out.jsonl.rejects.jsonl"
    for _ in range(3):
        assert cli(src, "-o", out, *FAKE).exit_code == 1
        assert [r["line"] for r in read_jsonl(rejects)] == [2, 4]
    assert [r["custom_id"] for r in read_jsonl(out)] == ["a", "b"]

    write_lines(src, [good("a"), good("fixed-2"), good("b"), good("fixed-4")])
    assert cli(src, "-o", out, *FAKE).exit_code == 0
    assert not rejects.exists()
    assert sorted(r["custom_id"] for r in read_jsonl(out)) == ["a", "b", "fixed-2", "fixed-4"]


def test_missing_template_fields_are_named_all_at_once(cli, tmp_path):
    """Data items with a prompt template: a line missing fields is a reject that names
    every missing field; a line missing its id field too; complete lines go through."""
    rows = [
        {"id": "r1", "text": "great", "author": "ann"},
        {"id": "r2"},
        {"id": "r3", "text": "meh"},
        {"text": "no id", "author": "bob"},
        {"id": "r5", "text": "fine", "author": "cy", "extra": [1, 2]},
    ]
    src = write_lines(tmp_path / "in.jsonl", [orjson.dumps(r) for r in rows])
    out = tmp_path / "out.jsonl"
    result = cli(src, "-o", out, *FAKE, "--prompt", "Review: {text} (by {author})", "--id-field", "id")

    assert result.exit_code == 1, result.output
    got = {r["line"]: r["error"] for r in read_jsonl(tmp_path / "out.jsonl.rejects.jsonl")}
    assert got == {
        2: "missing template fields: text, author",
        3: "missing template field: author",
        4: "missing id field 'id'",
    }
    assert sorted(r["custom_id"] for r in read_jsonl(out)) == ["r1", "r5"]


# --- duplicates -----------------------------------------------------------------------


def test_duplicate_custom_ids_are_rejected_with_their_line_numbers(cli, tmp_path):
    """A repeated custom_id is a reject naming its line (and the first line that has
    it); the first occurrence is answered."""
    src = write_lines(
        tmp_path / "in.jsonl", [good("a"), good("b"), good("a"), good("c"), good("b"), good("a")]
    )
    out = tmp_path / "out.jsonl"
    result = cli(src, "-o", out, *FAKE)

    assert result.exit_code == 1
    rejects = read_jsonl(tmp_path / "out.jsonl.rejects.jsonl")
    assert [r["line"] for r in rejects] == [3, 5, 6]
    assert all("duplicate custom_id" in r["error"] for r in rejects)
    assert "'a'" in rejects[0]["error"] and "'b'" in rejects[1]["error"]
    records = read_jsonl(out)
    assert sorted((r["custom_id"], r["llmbatch"]["line"]) for r in records) == [("a", 1), ("b", 2), ("c", 4)]


def test_number_duplicates_makes_every_id_unique_and_resumes(cli, tmp_path):
    """--number-duplicates answers every line under a unique id, even when an input line
    already uses the name a numbered duplicate would get; a rerun sends nothing again."""
    lines = [good("a#3"), good("a"), good("a"), good("b"), good("b"), good("a")]
    src = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    result = cli(src, "-o", out, *FAKE, "--number-duplicates")

    assert result.exit_code == 0, result.output
    records = read_jsonl(out)
    ids = [r["custom_id"] for r in records]
    assert len(records) == len(lines)
    assert len(set(ids)) == len(ids), Counter(ids)
    assert sorted(r["llmbatch"]["line"] for r in records) == [1, 2, 3, 4, 5, 6]
    by_line = {r["llmbatch"]["line"]: r["custom_id"] for r in records}
    assert (by_line[1], by_line[2], by_line[4]) == ("a#3", "a", "b")
    assert by_line[5] == "b#5" and by_line[6] == "a#6"

    again = cli(src, "-o", out, *FAKE, "--number-duplicates", "--summary-json", tmp_path / "s.json")
    assert again.exit_code == 0
    summary = orjson.loads((tmp_path / "s.json").read_bytes())
    assert (summary["skipped"], summary["requests"]) == (len(lines), 0)
    assert len(read_jsonl(out)) == len(lines)


# --- huge lines -----------------------------------------------------------------------


class RefusesHugeBodies(FakeServer):
    """Answers 413 to a body over 1 MB, as many gateways do."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if len(await request.read()) > 1 << 20:
            body = {"error": {"message": "Request Entity Too Large", "type": "invalid_request_error"}}
            return web.Response(status=413, body=orjson.dumps(body), content_type="application/json")
        return await super().handle(request)


@pytest.mark.parametrize("cls", [FakeServer, RefusesHugeBodies], ids=["accepted", "refused-413"])
def test_a_10mb_line_is_sent_or_fails_cleanly_and_10mb_of_garbage_is_one_reject(cli, server, tmp_path, cls):
    """A valid 10 MB request is sent over HTTP: answered (accepted) or written with the
    server's error (413); a 10 MB line of garbage is one short reject; the small lines
    around them go through either way and nothing crashes."""
    srv = server(cls)
    huge = good("huge", "x" * MB10)
    garbage = b"{" + b"\x01garbage " * (MB10 // 9)
    src = write_lines(tmp_path / "in.jsonl", [good("before"), huge, garbage, good("after")])
    out = tmp_path / "out.jsonl"
    result = cli(src, "-o", out, "--base-url", srv.base_url, "--max-retries", "1", "--no-live", "-q")

    assert result.exit_code == 1, result.output
    records = {r["custom_id"]: r for r in read_jsonl(out)}
    assert sorted(records) == ["after", "before", "huge"]
    assert records["before"]["llmbatch"]["valid"] and records["after"]["llmbatch"]["valid"]
    if cls is FakeServer:
        assert records["huge"]["llmbatch"]["valid"]
        assert len(records["huge"]["response"]["body"]["choices"][0]["message"]["content"]) > MB10
    else:
        assert records["huge"]["error"]["message"] == "HTTP 413: Request Entity Too Large"
        assert records["huge"]["llmbatch"]["retries"] == 0  # refused for good, not retried
    reject_file = tmp_path / "out.jsonl.rejects.jsonl"
    assert reject_file.stat().st_size < 1000  # the reason, not the line
    assert [(r["line"], r["error"][:8]) for r in read_jsonl(reject_file)] == [(3, "not JSON")]


# --- arbitrary bytes ------------------------------------------------------------------

# Any bytes that stay one line: no newline inside, no carriage return at the end.
int64 = st.integers(-(2**63), 2**63 - 1)  # what orjson can write
one_line = st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"").rstrip(b"\r"))
json_ish = st.recursive(
    st.none() | st.booleans() | int64 | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
).map(orjson.dumps)
near_requests = st.fixed_dictionaries(
    {},
    optional={
        "custom_id": st.text(max_size=6) | int64,
        "body": st.none()
        | st.fixed_dictionaries({}, optional={"messages": st.just([]) | st.text(max_size=3)}),
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=5)})
        ),
        "input": st.text(max_size=5),
        "url": st.sampled_from(["/v1/chat/completions", "/v1/embeddings", "/v1/nope", ""]),
        "method": st.sampled_from(["POST", "GET", "post"]),
        "metadata": st.none() | st.fixed_dictionaries({"id": st.text(max_size=4)}),
    },
).map(orjson.dumps)
junk_line = one_line | json_ish | near_requests
mixed_lines = st.lists(st.tuples(st.booleans(), junk_line), min_size=1, max_size=25)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(lines=mixed_lines)
def test_arbitrary_lines_each_end_as_one_output_line_or_one_reject(cli, tmp_path, lines):
    """Good lines mixed with arbitrary bytes, JSON values and near-requests: the run
    never crashes (exit 0 or 1), every line number but a blank one ends in exactly one
    output line or one reject, and every good line's id is written exactly once. (The
    first line is good: rows that all fail the same way are a usage error instead, see
    the preflight tests.)"""
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    raw: list[bytes] = [good("good-first-6f1c")]
    good_ids: list[str] = ["good-first-6f1c"]
    for n, (is_good, junk) in enumerate(lines):
        if is_good:
            good_ids.append(f"good-{n}-6f1c")
            raw.append(good(good_ids[-1]))
        else:
            raw.append(junk)
    src = write_lines(work / "in.jsonl", raw)
    out = work / "out.jsonl"

    result = cli(src, "-o", out, *FAKE)

    assert result.exit_code in (0, 1), result.output
    records = read_jsonl(out)
    rejects = read_jsonl(work / "out.jsonl.rejects.jsonl")
    blank = [n for n, line in enumerate(raw, 1) if not line.rstrip(b"\r").strip()]
    assert len(records) + len(rejects) + len(blank) == len(raw)
    lines_seen = sorted([r["llmbatch"]["line"] for r in records] + [r["line"] for r in rejects] + blank)
    assert lines_seen == list(range(1, len(raw) + 1))
    ids = Counter(r["custom_id"] for r in records)
    assert all(ids[cid] == 1 for cid in good_ids)
    assert all(k == 1 for k in ids.values())
    assert all(isinstance(r["error"], str) and r["error"] for r in rejects)


# --- preflight ------------------------------------------------------------------------


def assert_fails_before_sending(result: Result, srv: FakeServer, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert srv.stats.requests == 0


PREFLIGHT: list[tuple[str, list[str], str]] = [
    ("output folder missing", ["-o", "nowhere/out.jsonl"], "output folder does not exist: nowhere"),
    (
        "rejects folder missing",
        ["-o", "out.jsonl", "--rejects", "nowhere/r.jsonl"],
        "cannot write nowhere/r.jsonl",
    ),
    ("input is output", ["-o", "in.jsonl"], "input and output are the same file"),
    ("input is output by another path", ["-o", "./sub/../in.jsonl"], "input and output are the same file"),
    ("output links to input", ["-o", "link.jsonl"], "input and output are the same file"),
    ("output is a folder", ["-o", "sub"], "output is a directory"),
    ("missing module", ["-o", "out.jsonl", "--validate", "python:nonexistent_mod:fn"], "nonexistent_mod"),
    ("missing schema", ["-o", "out.jsonl", "--validate", "schema:missing.json"], "missing.json"),
    ("missing --schema", ["-o", "out.jsonl", "--schema", "missing.json"], "missing.json"),
    ("unknown validator", ["-o", "out.jsonl", "--validate", "bogus"], "unknown validator 'bogus'"),
]


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in PREFLIGHT], ids=[c[0] for c in PREFLIGHT])
def test_preflight_problems_exit_2_with_one_line_and_send_nothing(cli, server, tmp_path, args, message):
    """Each problem a user can fix before spending anything: exit 2, one `error:` line
    saying what is wrong, no request sent, no output file left behind."""
    srv = server()
    write_lines(tmp_path / "in.jsonl", [good("a"), good("b")])
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "in.jsonl")
    before = sorted(p.name for p in tmp_path.iterdir())

    result = cli("in.jsonl", *args, "--base-url", srv.base_url, "--no-live")

    assert_fails_before_sending(result, srv, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "in.jsonl").read_bytes() == good("a") + b"\n" + good("b") + b"\n"


def test_missing_api_key_exits_2_before_sending(cli, server, tmp_path):
    """No OPENAI_API_KEY and no --api-key-file: exit 2 with what to do, nothing sent."""
    srv = server()
    write_lines(tmp_path / "in.jsonl", [good("a")])
    result = cli("in.jsonl", "-o", "out.jsonl", "--base-url", srv.base_url, "--no-live", key=None)
    assert_fails_before_sending(result, srv, "no API key")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("case", ["missing", "folder", "unreadable"])
def test_unusable_input_exits_2_before_sending(cli, server, tmp_path, case):
    """An input that is missing, a folder, or unreadable: exit 2, nothing sent."""
    srv = server()
    src = tmp_path / "in.jsonl"
    if case == "folder":
        src.mkdir()
    elif case == "unreadable":
        write_lines(src, [good("a")])
        src.chmod(0)
        try:
            src.open("rb").close()
        except PermissionError:
            pass
        else:
            pytest.skip("this user can read a file with mode 000 (root)")
    result = cli(src, "-o", tmp_path / "out.jsonl", "--base-url", srv.base_url, "--no-live")
    message = {
        "missing": "input file not found",
        "folder": "input is a directory",
        "unreadable": "cannot read",
    }
    assert_fails_before_sending(result, srv, message[case])
    assert not (tmp_path / "out.jsonl").exists()
