"""`llmbatch run`, end to end: what a user sees in the output file, the rejects file,
stderr and the exit code, on the offline fake provider and over real loopback HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import PYTHON, ROOT, SAMPLES, read_jsonl, write_jsonl
from jsonschema import Draft202012Validator

pytestmark = pytest.mark.usefixtures("no_backoff")

REVIEWS = SAMPLES / "reviews.jsonl"
BATCH = SAMPLES / "batch_requests.jsonl"
BODIES = SAMPLES / "bodies.jsonl"
EMBEDDINGS = SAMPLES / "embeddings.jsonl"


def batch_line(cid: str, text: str, *, model: str = "gpt-4o-mini", url: str = "/v1/chat/completions") -> dict:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": url,
        "body": {"model": model, "messages": [{"role": "user", "content": text}]},
    }


def ids_of(path: Path) -> list[str]:
    return [row.get("custom_id", row.get("llm_custom_id")) for row in read_jsonl(path)]


def input_ids(path: Path, key: str) -> list[str]:
    return [row[key] for row in read_jsonl(path)]


def http(server: Any) -> list[str]:
    """Flags that send the run through the loopback fake server with the real SDK path."""
    return ["--provider", "openai", "--base-url", server.base_url]


def assert_usage_error(result: Any, fragment: str) -> None:
    """Exit 2 with one clear `error:` line on stderr, no traceback, nothing on stdout."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""


# --- the demo and the input shapes ------------------------------------------------


def test_demo_classifies_every_review(run_cli, tmp_path):
    """`make demo` works offline: one schema-valid classification per review, exit 0."""
    out = tmp_path / "demo-output.jsonl"
    result = run_cli(
        "run", REVIEWS, "-o", out, "--provider", "fake",
        "--template", SAMPLES / "review_prompt.txt", "--id-field", "id",
        "--schema", SAMPLES / "review.schema.json", "--fresh",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    rows = read_jsonl(out)
    assert sorted(r["custom_id"] for r in rows) == sorted(input_ids(REVIEWS, "id"))
    schema = Draft202012Validator(orjson.loads((SAMPLES / "review.schema.json").read_bytes()))
    for row in rows:
        assert row["error"] is None
        assert row["llmbatch"]["valid"] is True
        answer = orjson.loads(row["response"]["body"]["choices"][0]["message"]["content"])
        schema.validate(answer)
    assert f"written: {len(rows)}" in result.stderr
    assert not Path(f"{out}.rejects.jsonl").exists()


def test_batch_api_lines_keep_their_custom_ids(run_cli, tmp_path):
    """A Batch API file gives one Batch-compatible output line per custom_id."""
    out = tmp_path / "out.jsonl"
    result = run_cli("run", BATCH, "-o", out, "--provider", "fake")
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out)
    assert sorted(r["custom_id"] for r in rows) == sorted(input_ids(BATCH, "custom_id"))
    for row in rows:
        assert row["id"].startswith("batch_req_")
        assert row["response"]["status_code"] == 200
        assert row["response"]["body"]["object"] == "chat.completion"
        assert row["response"]["body"]["model"] == "gpt-4o-mini"


def test_bare_bodies_keep_metadata_but_never_send_it(run_cli, fake_server, api_key, tmp_path):
    """Request bodies' `metadata` comes back in the output and never reaches the server."""
    server = fake_server()
    out = tmp_path / "out.jsonl"
    result = run_cli("run", BODIES, "-o", out, *http(server), "--model", "small-model")
    assert result.exit_code == 0, result.output
    inputs = read_jsonl(BODIES)
    by_id = {r["custom_id"]: r for r in read_jsonl(out)}
    assert sorted(by_id) == sorted(i["metadata"]["id"] for i in inputs)
    for item in inputs:
        assert by_id[item["metadata"]["id"]]["llmbatch"]["metadata"] == item["metadata"]
    sent = server.bodies
    assert len(sent) == len(inputs)
    assert all("metadata" not in body for body in sent)
    expected = [{**{k: v for k, v in i.items() if k != "metadata"}, "model": "small-model"} for i in inputs]
    assert sorted(sent, key=orjson.dumps) == sorted(expected, key=orjson.dumps)


def test_data_items_fill_the_prompt_with_system_and_id_field(run_cli, fake_server, api_key, tmp_path):
    """--prompt fills {fields} from each item, --system leads, --id-field names the lines."""
    server = fake_server()
    src = write_jsonl(
        tmp_path / "items.jsonl",
        [
            {"sku": "A-1", "name": "kettle", "text": "Boils fast."},
            {"sku": "A-2", "name": "toaster", "text": "Burns one side."},
        ],
    )
    out = tmp_path / "out.jsonl"
    result = run_cli(
        "run", src, "-o", out, *http(server), "--model", "m1",
        "--prompt", "Summarise the {name} review: {text}", "--id-field", "sku",
        "--system", "You are terse.",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(ids_of(out)) == ["A-1", "A-2"]
    sent = sorted(server.bodies, key=lambda b: b["messages"][1]["content"])
    assert [b["messages"] for b in sent] == [
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Summarise the kettle review: Boils fast."},
        ],
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Summarise the toaster review: Burns one side."},
        ],
    ]
    assert {b["model"] for b in sent} == {"m1"}


def test_data_items_without_id_field_are_named_by_line(run_cli, tmp_path):
    """Without --id-field each data item's custom_id is its line number."""
    src = write_jsonl(tmp_path / "items.jsonl", [{"q": "one"}, {"q": "two"}, {"q": "three"}])
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, "--provider", "fake", "--prompt", "Say {q}")
    assert result.exit_code == 0, result.output
    rows = {r["custom_id"]: r for r in read_jsonl(out)}
    assert sorted(rows) == ["line-1", "line-2", "line-3"]
    assert rows["line-2"]["response"]["body"]["choices"][0]["message"]["content"] == "echo: Say two"


def test_model_flag_overrides_every_line(run_cli, fake_server, api_key, tmp_path):
    """--model replaces the model named in each line, in what is sent and what comes back."""
    server = fake_server()
    out = tmp_path / "out.jsonl"
    result = run_cli("run", BATCH, "-o", out, *http(server), "--model", "override-model")
    assert result.exit_code == 0, result.output
    assert {b["model"] for b in server.bodies} == {"override-model"}
    assert {r["response"]["body"]["model"] for r in read_jsonl(out)} == {"override-model"}


def test_embeddings_batch_lines(run_cli, tmp_path):
    """Batch lines for /v1/embeddings come back as embedding vectors."""
    out = tmp_path / "out.jsonl"
    result = run_cli("run", EMBEDDINGS, "-o", out, "--provider", "fake")
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out)
    assert sorted(r["custom_id"] for r in rows) == sorted(input_ids(EMBEDDINGS, "custom_id"))
    for row in rows:
        body = row["response"]["body"]
        assert body["object"] == "list"
        vector = body["data"][0]["embedding"]
        assert vector and all(isinstance(x, float) for x in vector)
        assert row["llmbatch"]["valid"] is True


def test_embeddings_endpoint_for_data_items(run_cli, fake_server, api_key, tmp_path):
    """--endpoint /v1/embeddings turns each filled template into an embeddings request."""
    server = fake_server()
    out = tmp_path / "out.jsonl"
    result = run_cli(
        "run", REVIEWS, "-o", out, *http(server), "--model", "emb",
        "--prompt", "{text}", "--id-field", "id", "--endpoint", "/v1/embeddings",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {path for _, path, _, _ in server.received} == {"/v1/embeddings"}
    texts = {r["text"] for r in read_jsonl(REVIEWS)}
    assert {b["input"] for b in server.bodies} == texts
    assert sorted(ids_of(out)) == sorted(input_ids(REVIEWS, "id"))
    assert all(r["response"]["body"]["data"][0]["embedding"] for r in read_jsonl(out))


def test_merged_output_is_each_item_with_its_answer(run_cli, tmp_path):
    """--merged writes the original item's fields plus the answer, one flat row each."""
    out = tmp_path / "out.jsonl"
    result = run_cli(
        "run", REVIEWS, "-o", out, "--provider", "fake", "--merged",
        "--template", SAMPLES / "review_prompt.txt", "--id-field", "id",
        "--schema", SAMPLES / "review.schema.json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    items = {r["id"]: r for r in read_jsonl(REVIEWS)}
    rows = read_jsonl(out)
    assert sorted(r["llm_custom_id"] for r in rows) == sorted(items)
    for row in rows:
        item = items[row["llm_custom_id"]]
        assert {k: row[k] for k in item} == item
        assert row["llm_valid"] is True
        assert row["llm_error"] is None
        assert orjson.loads(row["llm_answer"])["sentiment"] in ("positive", "negative", "neutral")
        assert row["llm_prompt_tokens"] > 0


def test_ten_thousand_lines_over_http(run_cli, fake_server, api_key, tmp_path):
    """10,000 lines through real loopback HTTP give 10,000 lines, each custom_id once."""
    server = fake_server()
    n = 10_000
    src = write_jsonl(tmp_path / "big.jsonl", (batch_line(f"item-{i:05d}", f"Row {i}") for i in range(n)))
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, *http(server), "--model", "m")
    assert result.exit_code == 0, result.output
    got = Counter(ids_of(out))
    assert len(got) == n
    assert set(got.values()) == {1}
    assert set(got) == {f"item-{i:05d}" for i in range(n)}
    assert server.stats.requests == n
    assert f"written: {n:,}" in result.stderr


def test_concurrency_caps_requests_in_flight(run_cli, fake_server, api_key, tmp_path):
    """--concurrency 2 never has more than two requests out, so none times out waiting."""
    server = fake_server(latency_ms=60)
    src = write_jsonl(tmp_path / "in.jsonl", (batch_line(f"r{i}", f"Row {i}") for i in range(24)))
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, *http(server), "-c", "2", "--timeout", "0.5")
    assert result.exit_code == 0, result.output
    assert server.stats.max_in_flight <= 2
    assert server.stats.requests == 24
    assert all(r["llmbatch"]["retries"] == 0 for r in read_jsonl(out))


# --- bad input lines ------------------------------------------------------------

GOOD, DUP = {"id": "a", "text": "good one"}, {"id": "a", "text": "same id again"}

BAD_DATA_LINES = [
    GOOD,  # 1
    '{"id": "b", "text": "cut off',  # 2: not JSON
    '["not", "an", "object"]',  # 3
    b'{"id": "c", "text": "caf\xe9 au lait"}',  # 4: Latin-1, not UTF-8
    "",  # 5: blank: passed over, not a reject
    {"id": "d"},  # 6: no "text" for the template
    DUP,  # 7
    {"id": "e", "text": "good two"},  # 8
]
BAD_BATCH_LINES = [
    batch_line("r1", "first"),  # 1
    batch_line("r2", "draw a cat", url="/v1/images/generations"),  # 2: unknown endpoint
    batch_line("r1", "first again"),  # 3: duplicate custom_id
    "}{",  # 4: not JSON
    batch_line("r3", "third"),  # 5
]


@pytest.mark.parametrize(
    ("rows", "flags", "good_ids", "rejected"),
    [
        pytest.param(
            BAD_DATA_LINES,
            ["--prompt", "Classify: {text}", "--id-field", "id"],
            ["a", "e"],
            {
                2: "not JSON",
                3: "not a JSON object",
                4: "not valid UTF-8",
                6: "missing template field: text",
                7: "duplicate custom_id 'a'",
            },
            id="data-items",
        ),
        pytest.param(
            BAD_BATCH_LINES,
            [],
            ["r1", "r3"],
            {2: "unknown endpoint '/v1/images/generations'", 3: "duplicate custom_id 'r1'", 4: "not JSON"},
            id="batch-lines",
        ),
    ],
)
def test_bad_lines_are_rejected_with_their_line_numbers(run_cli, tmp_path, rows, flags, good_ids, rejected):
    """Each bad line becomes one reject naming its line; good lines still run; exit 1."""
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, "--provider", "fake", *flags)
    assert result.exit_code == 1, result.output
    assert sorted(ids_of(out)) == good_ids
    rejects_path = tmp_path / "out.jsonl.rejects.jsonl"
    rejects = read_jsonl(rejects_path)
    # Duplicates are confirmed after the last line, so their rejects come last.
    assert sorted(r["line"] for r in rejects) == sorted(rejected)
    for reject in rejects:
        assert rejected[reject["line"]] in reject["error"]
    assert f"rejected: {len(rejected)}" in result.stderr
    assert str(rejects_path) in result.stderr
    assert "Traceback" not in result.output


# --- resume -----------------------------------------------------------------------


def test_rerun_sends_only_what_is_not_done(run_cli, fake_server, api_key, tmp_path):
    """A rerun on the same output skips done ids: nothing sent twice, no duplicate lines."""
    server = fake_server()
    all_rows = [batch_line(f"r{i}", f"Row {i}") for i in range(10)]
    src = write_jsonl(tmp_path / "in.jsonl", all_rows[:6])
    out = tmp_path / "out.jsonl"
    first = run_cli("run", src, "-o", out, *http(server))
    assert first.exit_code == 0, first.output
    assert "resuming" not in first.stderr
    before = out.read_bytes()

    write_jsonl(src, all_rows)  # four more lines arrive
    again = run_cli("run", src, "-o", out, *http(server))
    assert again.exit_code == 0, again.output
    assert "resuming: 6 items already in" in again.stderr
    assert "skipped (already done): 6" in again.stderr
    assert out.read_bytes().startswith(before)
    assert sorted(ids_of(out)) == sorted(f"r{i}" for i in range(10))
    sent = [b["messages"][0]["content"] for b in server.bodies]
    assert sorted(sent) == sorted([f"Row {i}" for i in range(6)] + [f"Row {i}" for i in range(6, 10)])

    third = run_cli("run", src, "-o", out, *http(server))
    assert third.exit_code == 0, third.output
    assert len(server.bodies) == 10  # all done: nothing sent
    assert len(read_jsonl(out)) == 10


def test_torn_last_line_is_dropped_and_redone(run_cli, tmp_path):
    """Half a line left by a crash is cut off on rerun and that item is done again."""
    out = tmp_path / "out.jsonl"
    assert run_cli("run", BATCH, "-o", out, "--provider", "fake").exit_code == 0
    lines = out.read_bytes().splitlines(keepends=True)
    torn_id = orjson.loads(lines[-1])["custom_id"]
    out.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])

    result = run_cli("run", BATCH, "-o", out, "--provider", "fake")
    assert result.exit_code == 0, result.output
    assert f"resuming: {len(lines) - 1} items" in result.stderr
    ids = ids_of(out)  # every line parses: the torn half is gone
    assert sorted(ids) == sorted(input_ids(BATCH, "custom_id"))
    assert ids[-1] == torn_id


def test_fresh_starts_over(run_cli, tmp_path):
    """--fresh empties the output and redoes every item instead of resuming."""
    out = tmp_path / "out.jsonl"
    assert run_cli("run", BATCH, "-o", out, "--provider", "fake").exit_code == 0
    result = run_cli("run", BATCH, "-o", out, "--provider", "fake", "--fresh", "--model", "fresh-model")
    assert result.exit_code == 0, result.output
    assert "resuming" not in result.stderr
    rows = read_jsonl(out)
    assert sorted(r["custom_id"] for r in rows) == sorted(input_ids(BATCH, "custom_id"))
    assert {r["response"]["body"]["model"] for r in rows} == {"fresh-model"}


def test_sigkill_mid_run_then_rerun_has_every_id_once(run_cli, fake_server, api_key, tmp_path):
    """After `kill -9` mid-run, a rerun completes the file with every id exactly once."""
    slow = fake_server(latency_ms=20)
    n = 1000
    src = write_jsonl(tmp_path / "in.jsonl", (batch_line(f"k{i:04d}", f"Row {i}") for i in range(n)))
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [PYTHON, "-m", "llmbatch", "run", str(src), "-o", str(out), *http(slow), "-c", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 50:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    written = out.read_bytes().count(b"\n")
    assert 50 <= written < n

    fast = fake_server()
    result = run_cli("run", src, "-o", out, *http(fast))
    assert result.exit_code == 0, result.output
    assert "resuming:" in result.stderr
    got = Counter(ids_of(out))
    assert set(got) == {f"k{i:04d}" for i in range(n)}
    assert set(got.values()) == {1}
    assert len(fast.bodies) == n - written


# --- usage errors: one line, exit 2, nothing sent ---------------------------------


def _missing_input(tmp_path: Path) -> tuple[Path, Path, str]:
    return tmp_path / "nope.jsonl", tmp_path / "out.jsonl", "input file not found"


def _missing_folder(tmp_path: Path) -> tuple[Path, Path, str]:
    return BATCH, tmp_path / "no" / "such" / "out.jsonl", "output folder does not exist"


def _read_only_folder(tmp_path: Path) -> tuple[Path, Path, str]:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        pytest.skip("running as a user who can write anywhere (root)")
    return BATCH, folder / "out.jsonl", "cannot write"


def _same_file(tmp_path: Path) -> tuple[Path, Path, str]:
    src = tmp_path / "in.jsonl"
    src.write_bytes(BATCH.read_bytes())
    other_name = tmp_path / "link.jsonl"
    other_name.symlink_to(src)
    return src, other_name, "input and output are the same file"


@pytest.mark.parametrize(
    "case",
    [_missing_input, _missing_folder, _read_only_folder, _same_file],
    ids=["missing-input", "missing-output-folder", "read-only-output-folder", "input-is-output"],
)
def test_file_problems_fail_at_once(run_cli, fake_server, api_key, tmp_path, case):
    """Path mistakes give one `error:` line and exit 2 before any request is sent."""
    server = fake_server()
    src, out, message = case(tmp_path)
    before = src.read_bytes() if src.exists() else None
    result = run_cli("run", src, "-o", out, *http(server))
    assert_usage_error(result, message)
    assert server.stats.requests == 0
    if before is not None:
        assert src.read_bytes() == before  # the input is never touched
    assert out.exists() == (case is _same_file)  # no empty output left behind
    assert not Path(f"{out}.rejects.jsonl").exists()


def test_missing_api_key_fails_at_once(run_cli, fake_server, tmp_path):
    """--provider openai without a key says how to give one, exits 2, and sends nothing."""
    server = fake_server()
    out = tmp_path / "out.jsonl"
    result = run_cli("run", BATCH, "-o", out, *http(server))
    assert_usage_error(result, "no API key: set OPENAI_API_KEY")
    assert server.stats.requests == 0
    assert not out.exists()
    assert not Path(f"{out}.rejects.jsonl").exists()


# --- exit codes -------------------------------------------------------------------


def test_a_refused_request_is_written_with_its_error_and_exits_1(run_cli, tmp_path):
    """An item the server refuses (400) is written with the error; the others succeed; exit 1."""
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [
            batch_line("ok-1", "hello"),
            batch_line("bad", 'x\n@fake {"fail": [400]}'),
            batch_line("ok-2", "hi"),
        ],
    )
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, "--provider", "fake")
    assert result.exit_code == 1, result.output
    rows = {r["custom_id"]: r for r in read_jsonl(out)}
    assert sorted(rows) == ["bad", "ok-1", "ok-2"]
    assert rows["bad"]["response"] is None
    assert "HTTP 400" in rows["bad"]["error"]["message"]
    assert rows["bad"]["llmbatch"]["valid"] is False
    assert rows["ok-1"]["error"] is None and rows["ok-2"]["llmbatch"]["valid"] is True
    assert "failed 1" in result.stderr


def test_invalid_answers_are_written_invalid_and_exit_1(run_cli, tmp_path):
    """An answer that never passes --validate is written valid: false after --max-requests."""
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [batch_line("good", "Reply in JSON."), batch_line("prose", 'Reply in JSON.\n@fake {"bad": 9}')],
    )
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, "--provider", "fake", "--validate", "json", "--max-requests", "2")
    assert result.exit_code == 1, result.output
    rows = {r["custom_id"]: r for r in read_jsonl(out)}
    assert rows["good"]["llmbatch"]["valid"] is True
    assert rows["prose"]["llmbatch"]["valid"] is False
    assert rows["prose"]["llmbatch"]["requests"] == 2
    assert rows["prose"]["error"]["code"] == "invalid_answer"
    assert "invalid 1" in result.stderr


def test_wrong_api_key_exits_3_and_rerun_with_right_key_finishes(run_cli, fake_server, tmp_path):
    """A refused key stops the run with exit 3; the rerun with the right key finishes it."""
    server = fake_server(api_key="sk-right-key")
    out = tmp_path / "out.jsonl"
    stopped = run_cli("run", BATCH, "-o", out, *http(server), env={"OPENAI_API_KEY": "sk-wrong-key"})
    assert stopped.exit_code == 3, stopped.output
    assert "refused the credentials" in stopped.stderr
    assert "Traceback" not in stopped.output
    assert read_jsonl(out) == []  # nothing written as failed: the rerun does it all

    done = run_cli("run", BATCH, "-o", out, *http(server), env={"OPENAI_API_KEY": "sk-right-key"})
    assert done.exit_code == 0, done.output
    assert sorted(ids_of(out)) == sorted(input_ids(BATCH, "custom_id"))
    assert all(r["llmbatch"]["valid"] for r in read_jsonl(out))


def test_auth_failure_mid_run_keeps_what_was_written_and_resumes(run_cli, fake_server, api_key, tmp_path):
    """A 401 mid-run stops with exit 3 keeping earlier lines; the rerun sends only the rest."""
    server = fake_server()
    rows = [batch_line(f"r{i}", f"Row {i}") for i in range(6)]
    rows[3] = batch_line("r3", 'Row 3\n@fake {"fail": [401]}')  # the key is revoked here
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    stopped = run_cli("run", src, "-o", out, *http(server), "-c", "1")
    assert stopped.exit_code == 3, stopped.output
    assert ids_of(out) == ["r0", "r1", "r2"]
    assert len(server.bodies) == 4  # nothing is dispatched after the 401

    resumed = run_cli("run", src, "-o", out, *http(server), "-c", "1")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming: 3 items" in resumed.stderr
    assert ids_of(out) == [f"r{i}" for i in range(6)]
    resent = [b["messages"][0]["content"].split("\n")[0] for b in server.bodies[4:]]
    assert resent == ["Row 3", "Row 4", "Row 5"]


def test_api_key_never_appears_in_anything_the_user_sees(run_cli, fake_server, api_key, tmp_path):
    """The key is sent to the server but never printed or written, even when refused."""
    server = fake_server(api_key=api_key)
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [batch_line("ok", "hello"), batch_line("bad", '@fake {"fail": [400]}'), "not json"],
    )
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, *http(server))
    assert result.exit_code == 1, result.output
    assert f"Bearer {api_key}" in server.stats.authorizations  # the key was really used

    refusing = fake_server(api_key="sk-some-other-key")
    out2 = tmp_path / "out2.jsonl"
    refused = run_cli("run", src, "-o", out2, *http(refusing))
    assert refused.exit_code == 3, refused.output

    seen = [result.stdout, result.stderr, refused.stdout, refused.stderr]
    for path in (out, out2, Path(f"{out}.rejects.jsonl"), Path(f"{out2}.rejects.jsonl")):
        if path.exists():
            seen.append(path.read_text())
    assert len(seen) >= 6
    assert all(api_key not in text for text in seen)
    assert all(api_key[-12:] not in text for text in seen)  # not even its tail


# --- streams ----------------------------------------------------------------------


def test_python_m_llmbatch_keeps_stdout_empty(tmp_path):
    """`python -m llmbatch run` prints nothing on stdout: results go to the file, status to stderr."""
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [PYTHON, "-m", "llmbatch", "run", str(BATCH), "-o", str(out), "--provider", "fake"],
        capture_output=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    assert b"written: " in proc.stderr
    assert sorted(ids_of(out)) == sorted(input_ids(BATCH, "custom_id"))


def test_merged_output_resumes_by_its_own_ids(run_cli, tmp_path):
    """A merged rerun skips done items even when the items carry a `custom_id` field of their own."""
    src = write_jsonl(
        tmp_path / "items.jsonl",
        [{"key": f"k{i}", "custom_id": f"upstream-{i}", "text": f"Row {i}"} for i in range(4)],
    )
    out = tmp_path / "out.jsonl"
    flags = ["--provider", "fake", "--merged", "--prompt", "Say {text}", "--id-field", "key"]
    assert run_cli("run", src, "-o", out, *flags).exit_code == 0
    again = run_cli("run", src, "-o", out, *flags)
    assert again.exit_code == 0, again.output
    assert "resuming: 4 items" in again.stderr
    rows = read_jsonl(out)
    assert sorted(r["llm_custom_id"] for r in rows) == ["k0", "k1", "k2", "k3"]
    assert sorted(r["custom_id"] for r in rows) == [f"upstream-{i}" for i in range(4)]  # the item's own field
