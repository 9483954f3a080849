"""Tables as input: the same rows as JSONL, CSV, TSV and Parquet make the same requests
(fingerprints and bodies at the server) and the same output, through the CLI against the
fake server over loopback; bad rows are rejects naming their row; Parquet keeps its
types; CSV comes from standard input and compressed; reruns, duplicates, shards and the
Batch API mode treat a table's rows as JSONL lines."""

from __future__ import annotations

import csv
import datetime
import decimal
import gzip
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import by_id, read_jsonl, write_jsonl

TEXTS = ["plain", "a, comma", 'a "quote"', "two\nlines", "tab\there", "ünïcödé ✓", "", "  spaced  "]


def rows(n: int) -> list[dict[str, str]]:
    """Data items whose values are all strings (what a CSV holds), tricky ones included."""
    return [{"id": f"r{i}", "text": f"{TEXTS[i % len(TEXTS)]} {i}", "n": str(i)} for i in range(n)]


def write_csv(path: Path, items: list[dict[str, Any]], *, delimiter: str = ",") -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(items[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(items)
    return path


def write_parquet(path: Path, items: list[dict[str, Any]], *, row_group_size: int = 500) -> Path:
    pq.write_table(pa.Table.from_pylist(items), path, row_group_size=row_group_size)
    return path


def the_same_four(tmp_path: Path, items: list[dict[str, Any]]) -> dict[str, Path]:
    return {
        "jsonl": write_jsonl(tmp_path / "in.jsonl", items),
        "csv": write_csv(tmp_path / "in.csv", items),
        "tsv": write_csv(tmp_path / "in.tsv", items, delimiter="\t"),
        "parquet": write_parquet(tmp_path / "in.parquet", items),
    }


def answers(out: Path) -> dict[str, tuple[Any, ...]]:
    """What an output says of each id: its input line, fingerprint, state and answer."""
    return {
        cid: (r["llmbatch"]["line"], r["llmbatch"]["fp"], r["llmbatch"]["state"],
              r["response"]["body"]["choices"][0]["message"]["content"])
        for cid, r in by_id(out).items()
    }  # fmt: skip


def test_csv_tsv_and_parquet_make_the_requests_and_output_jsonl_makes(
    run_cli, fake_server, api_key, tmp_path
):
    """2,000 rows (commas, quotes, newlines and tabs inside values) as JSONL, CSV, TSV and
    Parquet: the server receives the same bodies, and the outputs hold the same ids,
    line numbers, fingerprints and answers."""
    items = rows(2000)
    files = the_same_four(tmp_path, items)
    got: dict[str, dict[str, tuple[Any, ...]]] = {}
    bodies: dict[str, list[Any]] = {}
    for form, path in files.items():
        server = fake_server()
        out = tmp_path / f"out-{form}.jsonl"
        result = run_cli("run", path, "-o", out, "--base-url", server.base_url, "-m", "m",
                         "--prompt", "Say {text} ({n})", "--id-field", "id", "--no-live", "-q")  # fmt: skip
        assert result.exit_code == 0, (form, result.output)
        got[form] = answers(out)
        bodies[form] = sorted(orjson.dumps(b, option=orjson.OPT_SORT_KEYS) for b in server.bodies)
    assert len(got["jsonl"]) == 2000
    for form in ("csv", "tsv", "parquet"):
        assert got[form] == got["jsonl"], form
        assert bodies[form] == bodies["jsonl"], form
    assert got["csv"]["r3"][3] == "echo: Say two\nlines 3 (3)"  # a quoted newline is one row's value


def test_merged_rows_of_a_csv_are_the_rows_of_its_jsonl(run_cli, tmp_path):
    """--merged: the row's columns, as strings, then the llm_* columns, equal to the
    JSONL form's rows; rows without --id-field are numbered by record (row 1 the first
    data row), also past a value that spans lines."""
    items = rows(40)
    files = the_same_four(tmp_path, items)
    merged = {}
    for form in ("jsonl", "csv"):
        out = tmp_path / f"m-{form}.jsonl"
        result = run_cli("run", files[form], "-o", out, "--merged", "--provider", "fake", "--fake-latency-ms",
                         "0", "--prompt", "Say {text}", "--ordered", "-q")  # fmt: skip
        assert result.exit_code == 0, result.output
        merged[form] = [
            {k: v for k, v in r.items() if k not in ("llm_latency_ms", "llm_t")} for r in read_jsonl(out)
        ]
    assert merged["csv"] == merged["jsonl"]
    assert [r["llm_line"] for r in merged["csv"]] == list(range(1, 41))
    assert merged["csv"][3]["llm_custom_id"] == "line-4" and merged["csv"][3]["text"] == "two\nlines 3"


def test_a_bad_row_is_a_reject_naming_its_row_and_the_run_goes_on(run_cli, tmp_path):
    """A row with a field too many, one with a field too few and one in another encoding
    are rejects with their row numbers (a blank line is a blank row, passed over); the
    other rows are answered; with the right --csv-encoding the odd one is read too."""
    src = tmp_path / "in.csv"
    src.write_bytes(b'id,text\nr1,fine\nr2,"spans\ntwo lines"\n\nr4,too,many\nr5\nr6,caf\xe9\nr7,last\n')
    out = tmp_path / "out.jsonl"
    result = run_cli(
        "run", src, "-o", out, "--provider", "fake", "--prompt", "{text}", "--id-field", "id", "-q"
    )
    assert result.exit_code == 1, result.output
    assert sorted(by_id(out)) == ["r1", "r2", "r7"]
    assert by_id(out)["r7"]["llmbatch"]["line"] == 7
    rejects = read_jsonl(tmp_path / "out.jsonl.rejects.jsonl")
    assert rejects == [
        {"line": 4, "error": "3 fields, the header has 2"},
        {"line": 5, "error": "1 fields, the header has 2"},
        {"line": 6, "error": "not valid UTF-8 (give --csv-encoding)"},
    ]
    assert "blank lines: 1" in result.stderr
    again = tmp_path / "latin.jsonl"
    result = run_cli("run", src, "-o", again, "--provider", "fake", "--prompt", "{text}", "--id-field", "id",
                     "--csv-encoding", "latin-1", "--merged", "-q")  # fmt: skip
    assert {r["llm_custom_id"]: r["text"] for r in read_jsonl(again)}["r6"] == "café"


def test_parquet_values_keep_their_types_and_text_stands_for_what_json_cannot_hold(run_cli, tmp_path):
    """An int id with --id-field, a list, a decimal, timestamps (nanoseconds too), a date
    and bytes: the template and the merged row see JSON's types, decimals and times as
    ISO 8601 strings, bytes as base64."""
    table = pa.table({
        "id": pa.array([7, 8], pa.int64()),
        "tags": pa.array([["a", "b"], []]),
        "price": pa.array([decimal.Decimal("1.50"), None], pa.decimal128(6, 2)),
        "at": pa.array([datetime.datetime(2024, 5, 1, 12, 30), None], pa.timestamp("us")),
        "ns": pa.array([1_700_000_000_000_000_001, 0], pa.timestamp("ns", tz="UTC")),
        "day": pa.array([datetime.date(2024, 5, 1), datetime.date(2024, 5, 2)]),
        "blob": pa.array([b"\x00\xff", b""]),
        "score": pa.array([0.5, 2.0]),
    })  # fmt: skip
    src = tmp_path / "in.parquet"
    pq.write_table(table, src)
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, "--merged", "--provider", "fake", "--id-field", "id", "-q",
                     "--prompt", "{tags}|{price}|{at}|{ns}|{day}|{blob}|{score}")  # fmt: skip
    assert result.exit_code == 0, result.output
    row = {r["llm_custom_id"]: r for r in read_jsonl(out)}["7"]
    assert row["id"] == 7 and row["tags"] == ["a", "b"] and row["score"] == 0.5
    assert row["price"] == "1.50" and row["at"] == "2024-05-01T12:30:00" and row["day"] == "2024-05-01"
    assert row["ns"] == "2023-11-14T22:13:20.000000001+00:00" and row["blob"] == "AP8="
    assert (
        row["llm_answer"]
        == 'echo: ["a","b"]|1.50|2024-05-01T12:30:00|2023-11-14T22:13:20.000000001+00:00|2024-05-01|AP8=|0.5'
    )


def test_csv_from_standard_input_and_compressed(run_cli, tmp_path):
    """`-` with --input-format csv, and a .csv.gz told by its name: the same answers as
    the plain file."""
    items = rows(30)
    plain = write_csv(tmp_path / "in.csv", items)
    packed = tmp_path / "in.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    common = ("--provider", "fake", "--prompt", "{text}", "--id-field", "id", "-q")
    assert run_cli("run", plain, "-o", tmp_path / "a.jsonl", *common).exit_code == 0
    assert run_cli("run", packed, "-o", tmp_path / "b.jsonl", *common).exit_code == 0
    result = run_cli("run", "-", "-o", tmp_path / "c.jsonl", "--input-format", "csv", *common,
                     input=plain.read_bytes())  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = answers(tmp_path / "a.jsonl")
    assert answers(tmp_path / "b.jsonl") == expected == answers(tmp_path / "c.jsonl")
    assert len(expected) == 30


def test_a_rerun_of_a_table_skips_what_is_done_and_a_changed_row_is_stale(run_cli, tmp_path):
    """A second run of the same CSV sends nothing; a CSV whose one row changed is stale
    for that row (exit 2) until --redo stale, which asks that one again."""
    items = rows(20)
    src = write_csv(tmp_path / "in.csv", items)
    out = tmp_path / "out.jsonl"
    common = ("--provider", "fake", "--prompt", "{text}", "--id-field", "id", "-q")
    assert run_cli("run", src, "-o", out, *common).exit_code == 0
    again = run_cli("run", src, "-o", out, *common)
    assert again.exit_code == 0 and "skipped (already done): 20" in again.stderr
    items[3]["text"] = "changed"
    write_csv(src, items)
    stale = run_cli("run", src, "-o", out, *common)
    assert stale.exit_code == 2 and "1 answer in" in stale.stderr
    redo = run_cli("run", src, "-o", out, *common, "--redo", "stale")
    assert redo.exit_code == 0
    assert by_id(out)["r3"]["response"]["body"]["choices"][0]["message"]["content"] == "echo: changed"


def test_duplicate_ids_in_a_table_are_rejects_or_numbered(run_cli, tmp_path):
    """A CSV and a Parquet file holding an id twice: the second is a reject naming the
    first's row; --number-duplicates gives it a #ROW name."""
    items = [{"id": "a", "text": "1"}, {"id": "b", "text": "2"}, {"id": "a", "text": "3"}]
    for src in (write_csv(tmp_path / "d.csv", items), write_parquet(tmp_path / "d.parquet", items)):
        out = tmp_path / f"{src.suffix[1:]}.jsonl"
        common = ("--provider", "fake", "--prompt", "{text}", "--id-field", "id", "-q")
        assert run_cli("run", src, "-o", out, *common).exit_code == 1
        assert read_jsonl(Path(f"{out}.rejects.jsonl")) == [
            {"line": 3, "error": "duplicate custom_id 'a' (line 1 has it)"}
        ]
        numbered = tmp_path / f"n-{src.suffix[1:]}.jsonl"
        assert run_cli("run", src, "-o", numbered, *common, "--number-duplicates").exit_code == 0
        assert sorted(by_id(numbered)) == ["a", "a#3", "b"]


def test_shards_of_a_parquet_file_cover_it_once(run_cli, tmp_path):
    """--shard 0/2 and 1/2 of a Parquet file of 300 rows in row groups of 64: every id in
    exactly one shard, and the merge of both holds them all."""
    items = rows(300)
    src = write_parquet(tmp_path / "in.parquet", items, row_group_size=64)
    common = ("--provider", "fake", "--prompt", "{text}", "--id-field", "id", "-q")
    for k in (0, 1):
        assert (
            run_cli("run", src, "-o", tmp_path / "out-{shard}.jsonl", "--shard", f"{k}/2", *common).exit_code
            == 0
        )
    first, second = set(by_id(tmp_path / "out-0.jsonl")), set(by_id(tmp_path / "out-1.jsonl"))
    assert not first & second and first | second == {r["id"] for r in items}
    assert first and second


def test_the_batch_api_mode_sends_a_tables_rows(run_cli, fake_server, api_key, tmp_path):
    """--batch-api with a CSV: every row answered through a batch, with the line numbers
    and fingerprints of the live run of the same rows."""
    items = rows(25)
    src = write_csv(tmp_path / "in.csv", items)
    server = fake_server()
    common = ("--base-url", server.base_url, "-m", "gpt-4o-mini", "--prompt", "{text}", "--id-field", "id",
              "--no-live", "-q")  # fmt: skip
    batch, live = tmp_path / "batch.jsonl", tmp_path / "live.jsonl"
    result = run_cli(
        "run", src, "-o", batch, "--batch-api", "--poll-every", "0.05", "--batch-requests", "10", *common
    )
    assert result.exit_code == 0, result.output
    assert run_cli("run", src, "-o", live, *common).exit_code == 0
    assert all(r["llmbatch"]["via"] == "batch" for r in by_id(batch).values())
    assert answers(batch) == answers(live)
    assert server.stats.creates == 3


def test_the_input_format_is_told_by_name_or_bytes_or_flag(run_cli, tmp_path):
    """A Parquet file named .dat is told by its first bytes; a CSV named .txt needs
    --input-format csv; a TSV may be read with --csv-delimiter tab too."""
    items = rows(5)
    odd = write_parquet(tmp_path / "rows.dat", items)
    text = write_csv(tmp_path / "rows.txt", items)
    tabs = write_csv(tmp_path / "tabs.txt", items, delimiter="\t")
    common = ("--provider", "fake", "--prompt", "{text}", "--id-field", "id", "-q")
    assert run_cli("run", odd, "-o", tmp_path / "a.jsonl", *common).exit_code == 0
    assert run_cli("run", text, "-o", tmp_path / "b.jsonl", *common, "--input-format", "csv").exit_code == 0
    result = run_cli("run", tabs, "-o", tmp_path / "c.jsonl", *common, "--input-format", "csv",
                     "--csv-delimiter", "tab")  # fmt: skip
    assert result.exit_code == 0
    assert answers(tmp_path / "a.jsonl") == answers(tmp_path / "b.jsonl") == answers(tmp_path / "c.jsonl")


@pytest.mark.parametrize(
    ("text", "flags", "message"),
    [
        ("id,id\n1,2\n", (), "the header names the column 'id' twice"),
        ("id,text\n1,2\n", ("--csv-delimiter", ";;"), "--csv-delimiter must be one character"),
        ("id,text\n1,2\n", ("--csv-encoding", "klingon"), "unknown encoding 'klingon'"),
        ("id,text\n1,2\n", ("--input-format", "parquet"), "cannot read"),
    ],
)
def test_a_table_that_cannot_be_read_is_one_usage_error(run_cli, tmp_path, text, flags, message):
    """A header naming a column twice, a bad delimiter or encoding, a CSV read as Parquet:
    exit 2 with one line, nothing sent."""
    src = tmp_path / "in.csv"
    src.write_text(text)
    out = tmp_path / "out.jsonl"
    result = run_cli("run", src, "-o", out, "--provider", "fake", "--prompt", "{text}", *flags)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert not out.exists() or not out.read_bytes()


def test_parquet_from_standard_input_or_without_pyarrow_is_refused(run_cli, tmp_path, monkeypatch):
    """Parquet on standard input is exit 2 saying to give the file; without pyarrow a
    Parquet input is exit 2 with the install line."""
    src = write_parquet(tmp_path / "in.parquet", rows(3))
    common = ("--provider", "fake", "--prompt", "{text}")
    result = run_cli("run", "-", "-o", tmp_path / "a.jsonl", "--input-format", "parquet", *common, input=b"")
    assert result.exit_code == 2 and "give the file" in result.stderr
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow: ImportError
    result = run_cli("run", src, "-o", tmp_path / "b.jsonl", *common)
    assert result.exit_code == 2
    assert "pip install 'llmbatch[parquet]'" in result.stderr


def test_estimate_reads_a_table(run_cli, tmp_path):
    """`llmbatch estimate` counts a CSV's rows as requests."""
    src = write_csv(tmp_path / "in.csv", rows(12))
    result = run_cli("estimate", src, "--prompt", "{text}", "-m", "gpt-4o-mini", "--json")
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["requests"] == 12


@pytest.mark.parametrize("form", ["csv", "parquet"])
def test_a_table_run_killed_twice_resumes_with_each_id_once(spawn, fake_server, tmp_path, form):
    """SIGKILL twice mid-run of a 1,500-row CSV or Parquet input, then a run to the end:
    every id exactly once, with the line number of its row."""
    items = rows(1500)
    src = the_same_four(tmp_path, items)[form]
    out = tmp_path / "out.jsonl"
    server = fake_server(latency_ms=20)
    args = (src, "-o", out, "--base-url", server.base_url, "-m", "m", "--prompt", "{text}",
            "--id-field", "id", "-c", "16", "--no-live", "-q")  # fmt: skip
    for _ in range(2):
        sent = server.stats.requests
        proc = spawn(*args, key="sk-tables")
        deadline = time.monotonic() + 60
        while server.stats.requests < sent + 100 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL, proc.communicate()[1].decode()
    proc = spawn(*args, key="sk-tables")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    records = by_id(out)
    assert set(records) == {r["id"] for r in items}
    assert all(records[f"r{i}"]["llmbatch"]["line"] == i + 1 for i in range(1500))


def test_a_compressed_parquet_file_is_refused_saying_why(run_cli, tmp_path):
    """rows.parquet.gz: exit 2, saying Parquet is compressed inside, nothing sent."""
    src = tmp_path / "rows.parquet.gz"
    src.write_bytes(gzip.compress(write_parquet(tmp_path / "rows.parquet", rows(3)).read_bytes()))
    result = run_cli("run", src, "-o", tmp_path / "out.jsonl", "--provider", "fake", "--prompt", "{text}")
    assert result.exit_code == 2 and "compressed inside" in result.stderr
