"""One input split by `--shard K/N` across processes, and `llmbatch merge` joining the
outputs back into one file."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
from conftest import read_jsonl, write_jsonl
from hypothesis import given
from hypothesis import strategies as st

from llmbatch.app.merge import merge
from llmbatch.files.locking import OutputLock
from llmbatch.scale.shard import shard_of


def _input(tmp_path: Path, n: int = 40) -> Path:
    """`n` items, two bad lines and a duplicate id among them."""
    rows: list[object] = [{"id": f"item-{i}", "text": f"text {i}"} for i in range(n)]
    rows[7] = "not json"
    rows[20] = "[1, 2]"
    rows[30] = {"id": "item-3", "text": "again"}
    return write_jsonl(tmp_path / "in.jsonl", rows)


def _run_shard(run_cli, source: Path, out: Path, shard: str, *extra: object):
    return run_cli(
        "run", source, "-o", out, "--provider", "fake", "--fake-latency-ms", "0", "--prompt", "Say {text}",
        "--id-field", "id", "-m", "fake-model", "--shard", shard, "--no-live", *extra,
    )  # fmt: skip


def test_three_shards_cover_the_file_once_and_merge_joins_them(run_cli, tmp_path):
    """Shards 0/3, 1/3 and 2/3 answer every item once between them and list each bad
    line once; `llmbatch merge` makes one file of them, `--ordered` in input order."""
    source = _input(tmp_path)
    pattern = tmp_path / "out-{shard}.jsonl"
    summary = tmp_path / "summary-{shard}.json"
    for k in range(3):
        result = _run_shard(run_cli, source, pattern, f"{k}/3", "--summary-json", summary)
        assert result.exit_code == 1, result.output  # rejects in the input
        assert "estimated" not in result.stderr  # the pass is done: the shard's real count
    outputs = [tmp_path / f"out-{k}.jsonl" for k in range(3)]
    counts = Counter(rec["custom_id"] for path in outputs for rec in read_jsonl(path))
    assert set(counts) == {f"item-{i}" for i in range(40) if i not in (7, 20, 30)}
    assert set(counts.values()) == {1}
    assert all(len(read_jsonl(path)) > 5 for path in outputs)  # the work is split, not all in one
    rejects = [tmp_path / f"out-{k}.jsonl.rejects.jsonl" for k in range(3)]
    lines = sorted(rec["line"] for path in rejects if path.exists() for rec in read_jsonl(path))
    assert lines == [8, 21, 31]
    assert all((tmp_path / f"summary-{k}.json").exists() for k in range(3))

    joined = tmp_path / "all.jsonl"
    result = run_cli("merge", *outputs, "-o", joined)
    assert result.exit_code == 0, result.output
    assert f"merged 3 files into {joined}: 37 lines" in result.stderr
    assert Counter(rec["custom_id"] for rec in read_jsonl(joined)) == counts

    result = run_cli("merge", *outputs, "-o", joined, "--ordered")
    assert result.exit_code == 0, result.output
    in_order = [rec["llmbatch"]["line"] for rec in read_jsonl(joined)]
    assert in_order == sorted(in_order) and len(in_order) == 37

    result = run_cli("merge", *outputs, "-o", "-", "--ordered")  # for a pipe, as `run -o -`
    assert result.exit_code == 0, result.output
    assert [orjson.loads(x)["llmbatch"]["line"] for x in result.stdout.splitlines()] == in_order
    assert "merged 3 files into standard output: 37 lines" in result.stderr
    assert not (tmp_path / "cwd" / "-").exists()


def test_a_rerun_of_one_shard_sends_only_what_that_shard_still_needs(run_cli, tmp_path):
    """A shard rerun resumes its own output: the other shards' items are not its work."""
    source = _input(tmp_path)
    out = tmp_path / "out-{shard}.jsonl"
    assert _run_shard(run_cli, source, out, "1/2").exit_code == 1
    again = _run_shard(run_cli, source, out, "1/2", "--summary-json", tmp_path / "s.json")
    assert again.exit_code == 1  # the rejects again
    summary = orjson.loads((tmp_path / "s.json").read_bytes())
    assert summary["attempts"] == 0 and summary["done"] == 0
    assert summary["skipped"] == len(read_jsonl(tmp_path / "out-1.jsonl"))  # its own items, all done
    assert not (tmp_path / "out-0.jsonl").exists()


def test_several_shards_need_an_output_each(run_cli, tmp_path):
    """--shard 1/3 with an -o that has no {shard}: exit 2, saying how to name them."""
    source = _input(tmp_path)
    result = _run_shard(run_cli, source, tmp_path / "out.jsonl", "1/3")
    assert result.exit_code == 2
    assert "{shard}" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_a_shard_that_is_not_k_of_n_is_a_usage_error(run_cli, tmp_path):
    """--shard 3/3 (K must be below N) and --shard two: exit 2 with the expected form."""
    source = _input(tmp_path)
    for bad in ("3/3", "two", "1/0"):
        result = _run_shard(run_cli, source, tmp_path / "out-{shard}.jsonl", bad)
        assert result.exit_code == 2
        assert "--shard takes K/N" in result.stderr


def test_an_items_shard_is_the_same_on_every_machine():
    """The split is BLAKE2b of the id, not Python's salted hash(): these values hold on
    any machine, Python version and run."""
    assert [shard_of(f"r-{i}", 4) for i in range(8)] == [1, 2, 1, 3, 3, 2, 3, 3]
    assert shard_of("ünïcode-id", 1000) == 510


@given(ids=st.lists(st.text(min_size=1, max_size=20), unique=True, max_size=50), n=st.integers(1, 9))
def test_the_shards_are_a_partition_of_the_ids(ids, n):
    """Every id is in exactly one of the N shards."""
    for cid in ids:
        assert sum(shard_of(cid, n) == k for k in range(n)) == 1


def _line(cid: str, line: int, answer: str) -> dict[str, object]:
    meta = {"line": line, "via": "live", "server": "", "fp": "00000000000000aa", "state": "valid"}
    return {
        "id": f"batch_req_{line}",
        "custom_id": cid,
        "response": {"body": answer},
        "error": None,
        "llmbatch": meta,
    }


def test_merge_keeps_the_newest_line_of_an_id_and_skips_a_torn_tail(run_cli, tmp_path):
    """An id in two files: the later file's line wins; a killed run's torn last line is
    left out, and the summary says both."""
    old = write_jsonl(tmp_path / "a.jsonl", [_line("x", 1, "old"), _line("y", 2, "y")])
    new = write_jsonl(tmp_path / "b.jsonl", [_line("x", 1, "new")])
    with new.open("ab") as f:
        f.write(b'{"id": "batch_req_9", "custom_id": "z", "resp')
    joined = tmp_path / "all.jsonl"
    result = run_cli("merge", old, new, "-o", joined)
    assert result.exit_code == 0, result.output
    assert {r["custom_id"]: r["response"]["body"] for r in read_jsonl(joined)} == {"x": "new", "y": "y"}
    assert "1 older line of an id dropped; 1 torn last line skipped" in result.stderr
    assert new.read_bytes().endswith(b'"resp')  # the inputs are left as they were


def test_an_ordered_merge_bigger_than_its_memory_is_sorted_stably(tmp_path):
    """--ordered spills sorted runs and merges them: the result is in input line order,
    lines without a number last, whatever the run size."""
    rows = [_line(f"id-{i}", (i * 37) % 101 + 1, "a" * 50) for i in range(101)]
    foreign = {"note": "not an llmbatch line"}
    first = write_jsonl(tmp_path / "a.jsonl", [*rows[:60], foreign])
    second = write_jsonl(tmp_path / "b.jsonl", rows[60:])
    joined = tmp_path / "all.jsonl"
    done = merge([first, second], joined, ordered=True, run_bytes=1000)
    assert done.lines == 102
    out = read_jsonl(joined)
    assert [r["llmbatch"]["line"] for r in out[:-1]] == list(range(1, 102))
    assert out[-1] == foreign


def test_merge_refuses_files_of_two_formats(run_cli, tmp_path):
    """Batch lines and merged rows cannot make one file: exit 2, naming both."""
    batch = write_jsonl(tmp_path / "a.jsonl", [_line("x", 1, "a")])
    rows = write_jsonl(
        tmp_path / "b.jsonl", [{"text": "t", "llm_custom_id": "y", "llm_line": 2, "llm_state": "valid"}]
    )
    result = run_cli("merge", batch, rows, "-o", tmp_path / "all.jsonl")
    assert result.exit_code == 2
    assert "merge files of one format" in result.stderr
    assert not (tmp_path / "all.jsonl").exists()


def test_merge_refuses_a_shard_that_is_still_being_written(run_cli, tmp_path):
    """A shard whose run still holds its lock is not merged half-written: exit 2."""
    busy = write_jsonl(tmp_path / "a.jsonl", [_line("x", 1, "a")])
    with OutputLock(busy):
        result = run_cli("merge", busy, "-o", tmp_path / "all.jsonl")
    assert result.exit_code == 2
    assert "being written by another llmbatch run" in result.stderr
