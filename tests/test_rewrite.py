"""One newest-line-per-id rewrite: a resume's compaction and `llmbatch merge` make the
same file of the same lines, and a rewrite that fails leaves the old file and no
temporary one."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llmbatch.output.rewrite as rewrite_module
from llmbatch.app.merge import merge
from llmbatch.files import sidecars
from llmbatch.output.readback import line_of
from llmbatch.output.rewrite import compact

IDS = st.sampled_from(["a", "b", "c", "d", "é", 'q"uote'])


def _batch(cid: str, line: int, answer: str, *, old: bool, spaced: bool) -> bytes:
    """Our Batch line: as this llmbatch writes it (read from its tail), spaced out (read
    by the parser), or as an older llmbatch wrote it (no fingerprint)."""
    meta: dict[str, object] = {"line": line, "requests": 1, "valid": True}
    if not old:
        meta |= {"via": "live", "server": "", "fp": "00000000000000aa", "state": "valid"}
    rec = {"id": f"batch_req_{line}", "custom_id": cid, "response": {"body": answer}, "error": None}
    rec["llmbatch"] = meta
    return json.dumps(rec).encode() if spaced else orjson.dumps(rec)


def _merged(cid: str, line: int, answer: str, *, old: bool, spaced: bool) -> bytes:
    row: dict[str, object] = {"custom_id": "the item's own", "llm_custom_id": cid, "llm_line": line}
    row |= {"llm_answer": answer, "llm_valid": True} if old else {"llm_state": "valid", "llm_fp": "00" * 8}
    return json.dumps(row).encode() if spaced else orjson.dumps(row)


FOREIGN = st.sampled_from(
    [
        b"not json at all",
        b"",
        b"[1, 2]",
        b'{"note": "a line of someone else\'s"}',
        b'{"custom_id": "a", "response": {"body": "no llmbatch block: not ours"}}',
        b'{"custom_id": "b", "llmbatch": "not a block"}',
        b'{"llmbatch": {"line": 1}}',
    ]
)


@st.composite
def outputs(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
    """Whole lines of one format (ours, in all their spellings, and foreign ones), and
    what follows the last newline: nothing, or a torn line."""
    shape = draw(st.sampled_from([_batch, _merged]))
    ours = st.builds(
        shape,
        IDS,
        st.integers(0, 30),
        st.text(max_size=5),
        old=st.booleans(),
        spaced=st.booleans(),
    )
    lines = draw(st.lists(st.one_of(ours, ours, FOREIGN), max_size=25))
    torn = draw(st.sampled_from([b"", b'{"id":"batch_req_9","custom_id":"a","resp', b'{"custom_id": "a"}']))
    return lines, torn


def _write(path: Path, lines: list[bytes], torn: bytes = b"") -> Path:
    path.write_bytes(b"".join(raw + b"\n" for raw in lines) + torn)
    return path


@settings(max_examples=300, deadline=None)
@given(case=outputs(), ordered=st.booleans(), cut=st.integers(0, 25))
def test_compacting_and_merging_the_same_lines_give_the_same_file(tmp_path_factory, case, ordered, cut):
    """Whatever the mix of ids, repeats, foreign lines and torn tail: a compaction, a
    merge of that file, and a merge of it split in two files (the tail in the second)
    leave the same bytes; each id of ours once, every foreign line kept, the tail gone."""
    lines, torn = case
    folder = tmp_path_factory.mktemp("rewrite")
    compacted = _write(folder / "out.jsonl", lines, torn)
    whole = _write(folder / "whole.jsonl", lines, torn)
    first = _write(folder / "first.jsonl", lines[:cut])
    second = _write(folder / "second.jsonl", lines[cut:], torn)

    dropped = compact(compacted, ordered=ordered)
    merged = merge([whole], folder / "merged.jsonl", ordered=ordered)
    split = merge([first, second], folder / "split.jsonl", ordered=ordered)

    result = compacted.read_bytes()
    assert (folder / "merged.jsonl").read_bytes() == result
    assert (folder / "split.jsonl").read_bytes() == result
    assert dropped == merged.dropped == split.dropped
    assert merged.torn == split.torn == (1 if torn else 0)
    assert not list(folder.glob("*.compacting")) and not list(folder.glob("*.merging"))
    kept = result.splitlines()
    foreign = [raw for raw in lines if line_of(raw + b"\n") is None]
    assert sorted(raw for raw in kept if raw in foreign) == sorted(foreign)
    assert len(kept) == len(lines) - dropped


def test_compaction_keeps_the_newest_line_of_each_id_in_its_place(tmp_path):
    """Three lines of one id and a foreign line: the newest of the id stays, where it was."""
    out = _write(
        tmp_path / "out.jsonl",
        [
            _batch("x", 1, "old", old=False, spaced=False),
            b"a note",
            _batch("y", 2, "y", old=False, spaced=False),
            _batch("x", 1, "new", old=False, spaced=True),
        ],
    )
    assert compact(out) == 1
    assert out.read_bytes().splitlines()[0] == b"a note"
    assert [orjson.loads(raw)["response"]["body"] for raw in out.read_bytes().splitlines()[1:]] == [
        "y",
        "new",
    ]


def _fail_after_first_line(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """The rewrite's writer writes one line, then fails (a full disk, a Ctrl-C)."""

    def write_lines(dst, lines, codec):
        dst.write(next(iter(lines)))
        raise error

    monkeypatch.setattr(rewrite_module, "write_lines", write_lines)


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_compaction_that_fails_midway_leaves_the_output_as_it_was(tmp_path, monkeypatch, error):
    """An error or an interrupt mid-compaction: the output is untouched and no
    OUTPUT.compacting is left behind."""
    lines = [_batch(cid, 1, "a", old=False, spaced=False) for cid in "xyx"]
    out = _write(tmp_path / "out.jsonl", lines)
    before = out.read_bytes()
    _fail_after_first_line(monkeypatch, error)
    with pytest.raises(type(error)):
        compact(out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_merge_that_fails_midway_leaves_no_half_file(tmp_path, monkeypatch, error):
    """An error or an interrupt mid-merge: the previous merged file is untouched, the
    inputs too, and no OUTPUT.merging (nor a lock) is left behind."""
    shard = _write(tmp_path / "a.jsonl", [_batch(cid, 1, "a", old=False, spaced=False) for cid in "xy"])
    joined = tmp_path / "all.jsonl"
    joined.write_bytes(b"the previous merge\n")
    _fail_after_first_line(monkeypatch, error)
    with pytest.raises(type(error)):
        merge([shard], joined)
    assert joined.read_bytes() == b"the previous merge\n"
    assert not sidecars.merging(joined).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "all.jsonl"]


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_merging_a_torn_compressed_output_is_refused_naming_it(run_cli, tmp_path, suffix):
    """A compressed shard cut short (a killed run's last block): exit 2 with one line
    naming the file, not a bare "Aborted." or a silently short merge."""
    import zstandard

    data = b"".join(_batch(f"id-{i}", i, "answer " * 20, old=False, spaced=False) + b"\n" for i in range(50))
    packed = gzip.compress(data) if suffix == ".gz" else zstandard.ZstdCompressor().compress(data)
    shard = tmp_path / f"a.jsonl{suffix}"
    shard.write_bytes(packed[: len(packed) // 2])
    result = run_cli("merge", shard, "-o", tmp_path / "all.jsonl")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and f"error: {shard} ends in a torn" in result.stderr
    assert not (tmp_path / "all.jsonl").exists()
    assert shard.read_bytes() == packed[: len(packed) // 2]  # the input is left as it was
