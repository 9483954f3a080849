"""Duplicate ids are found exactly, even though the table keeps only fingerprints."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from llmbatch.core.errors import InputError
from llmbatch.core.values import Request
from llmbatch.files.idset import IdSet
from llmbatch.input import source
from llmbatch.input.build import RequestBuilder
from llmbatch.input.source import Source


class EverythingCollides(IdSet):
    """A fingerprint table in which every id looks like every other."""

    def _key(self, text: str) -> int:
        return 7


def _lines(path: Path, ids: list[str]) -> None:
    rows = [
        {"custom_id": i, "body": {"model": "m", "messages": [{"role": "user", "content": i}]}} for i in ids
    ]
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


@pytest.mark.parametrize("table", [IdSet, EverythingCollides])
def test_chance_fingerprint_matches_are_sent_and_true_duplicates_rejected(tmp_path, monkeypatch, table):
    """Only true duplicates are rejected, naming the line that had the id first."""
    monkeypatch.setattr(source, "IdSet", table)
    src = tmp_path / "in.jsonl"
    _lines(src, ["a", "b", "a", "c", "b", "d"])
    out = list(Source(src, RequestBuilder()).requests())
    sent = sorted(r.custom_id for r in out if isinstance(r, Request))
    rejected = {e.line: str(e) for e in out if isinstance(e, InputError)}
    assert sent == ["a", "b", "c", "d"]
    assert rejected == {
        3: "duplicate custom_id 'a' (line 1 has it)",
        5: "duplicate custom_id 'b' (line 2 has it)",
    }


def test_numbered_duplicates_are_all_sent(tmp_path, monkeypatch):
    """--number-duplicates sends every line, the repeats with a #LINE suffix."""
    monkeypatch.setattr(source, "IdSet", EverythingCollides)
    src = tmp_path / "in.jsonl"
    _lines(src, ["a", "b", "a"])
    out = list(Source(src, RequestBuilder(), number_duplicates=True).requests())
    assert sorted(r.custom_id for r in out if isinstance(r, Request)) == ["a", "a#3", "b"]


def test_thirty_two_bit_table_holds_what_was_added():
    """The compact table finds every id it was given and grows past its first size.
    At 32 bits a hit only means "maybe": among 5,000 salted hashes a false one comes
    about once in 300 runs, so the test allows a couple (callers confirm a hit)."""
    ids = IdSet(bits=32)
    names = [f"row-{i}" for i in range(5000)]
    false_hits = sum(not ids.add(n) for n in names)
    assert false_hits <= 2
    assert not ids.add("row-17")
    assert all(n in ids for n in names)
    assert len(ids) == 5000 - false_hits
