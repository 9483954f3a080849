"""`llmbatch export`: finished outputs as a CSV, Parquet or JSONL table through the CLI,
one row per id (the newest), input order with --ordered, the data columns joined from
--input for Batch-shaped outputs, --spread, and a Parquet schema widened when later rows
differ from the first."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import read_jsonl, write_jsonl

from llmbatch.core.errors import ConfigError
from llmbatch.files.tables import write_parquet


def items(n: int) -> list[dict[str, Any]]:
    """Data items answered with a JSON object; every 10th fails (a 400: the request's fault)."""
    out = []
    for i in range(n):
        script: dict[str, Any] = {"answer": {"label": f"l{i % 3}", "score": i, "tags": ["a"]}}
        if i % 10 == 9:
            script = {"fail": [400]}
        out.append({"id": f"r{i:03d}", "text": "@fake " + orjson.dumps(script).decode(), "n": i})
    return out


def run(run_cli: Any, src: Path, out: Path, *extra: object) -> None:
    result = run_cli("run", src, "-o", out, "--provider", "fake", "--prompt", "{text}", "--id-field", "id",
                     "-q", "--fake-latency-ms", "0", *extra)  # fmt: skip
    assert result.exit_code in (0, 1), result.output


def test_a_batch_output_exports_to_parquet_with_its_inputs_columns(run_cli, tmp_path):
    """300 items, 30 failed: export --to parquet --input reads back in pyarrow with one
    row per id in input order, the data columns with their JSON types, the llm_* columns
    with theirs, and failures as rows with their error."""
    src = write_jsonl(tmp_path / "in.jsonl", items(300))
    out = tmp_path / "out.jsonl"
    run(run_cli, src, out)
    table_path = tmp_path / "t.parquet"
    result = run_cli("export", out, "-o", table_path, "--input", src, "--id-field", "id")
    assert result.exit_code == 0, result.output
    assert "exported 300 rows" in result.stderr
    table = pq.read_table(table_path)
    assert table.num_rows == 300
    assert table.column("llm_custom_id").to_pylist() == [f"r{i:03d}" for i in range(300)]
    schema = table.schema
    assert schema.names[:3] == ["id", "text", "n"]
    expected = {"n": pa.int64(), "llm_line": pa.int64(), "llm_answer": pa.string(), "llm_valid": pa.bool_(),
                "llm_state": pa.string(), "llm_prompt_tokens": pa.int64(), "llm_cost_usd": pa.float64(),
                "llm_error_code": pa.string(), "llm_latency_ms": pa.float64(),
                "llm_t": pa.int64()}  # fmt: skip
    assert {name: schema.field(name).type for name in expected} == expected
    rows = table.to_pylist()
    assert rows[9]["llm_state"] == "failed" and rows[9]["llm_error_code"] == "400"
    assert rows[9]["llm_answer"] is None and rows[9]["llm_fault"] == "request"
    assert orjson.loads(rows[0]["llm_answer"]) == {"label": "l0", "score": 0, "tags": ["a"]}
    assert rows[0]["llm_cost_usd"] == 0.0 and rows[0]["llm_model"] == "fake"


def test_the_newest_line_of_an_id_wins_and_ordered_is_input_order(run_cli, tmp_path):
    """Two outputs holding some ids twice (oldest first): the later file's line is the
    row; without --input only the llm_* columns; --ordered sorts by input line."""
    src = write_jsonl(tmp_path / "in.jsonl", items(40))
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run(run_cli, src, first)
    retried = write_jsonl(
        tmp_path / "again.jsonl", [{**r, "text": '@fake {"answer": "newer"}'} for r in items(40)[:5]]
    )
    run(run_cli, retried, second)
    table_path = tmp_path / "t.csv"
    result = run_cli("export", first, second, "-o", table_path, "--ordered")
    assert result.exit_code == 0, result.output
    assert "5 older lines of an id left out" in result.stderr
    with table_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["llm_custom_id"] for r in rows] == [f"r{i:03d}" for i in range(40)]
    assert all(k.startswith("llm_") for k in rows[0])
    assert [r["llm_answer"] for r in rows[:5]] == ["newer"] * 5
    assert rows[0]["llm_valid"] == "true" and rows[9]["llm_answer"] == ""


def test_spread_makes_one_column_per_property_of_json_answers(run_cli, tmp_path):
    """--spread: llm_answer.label, llm_answer.score and llm_answer.tags, typed in
    Parquet (a list stays a list); a failed row's are null."""
    src = write_jsonl(tmp_path / "in.jsonl", items(30))
    out = tmp_path / "out.jsonl"
    run(run_cli, src, out, "--merged")
    table_path = tmp_path / "t.parquet"
    result = run_cli("export", out, "-o", table_path, "--spread", "--ordered")
    assert result.exit_code == 0, result.output
    table = pq.read_table(table_path)
    spread = [n for n in table.schema.names if n.startswith("llm_answer.")]
    assert spread == ["llm_answer.label", "llm_answer.score", "llm_answer.tags"]
    assert table.schema.field("llm_answer.score").type == pa.int64()
    assert table.schema.field("llm_answer.tags").type == pa.list_(pa.string())
    rows = table.to_pylist()
    assert rows[4]["llm_answer.label"] == "l1" and rows[4]["llm_answer.tags"] == ["a"]
    assert rows[9]["llm_answer.score"] is None
    assert table.schema.names[:3] == ["id", "text", "n"]  # a merged row's own data columns


def test_a_csv_inputs_rows_join_a_batch_output(run_cli, tmp_path):
    """A CSV input's columns (strings) join its Batch-shaped output; --to jsonl writes
    the same rows as objects."""
    src = tmp_path / "in.csv"
    with src.open("w", newline="") as f:
        csv.writer(f).writerows(
            [["id", "text"], ["x1", '@fake {"answer": "one"}'], ["x2", '@fake {"answer": "two"}']]
        )
    out = tmp_path / "out.jsonl"
    run(run_cli, src, out)
    table_path = tmp_path / "t.jsonl"
    result = run_cli("export", out, "-o", table_path, "--input", src, "--to", "jsonl")
    assert result.exit_code == 0, result.output
    rows = read_jsonl(table_path)
    assert [(r["id"], r["llm_answer"]) for r in rows] == [("x1", "one"), ("x2", "two")]


def test_an_input_line_naming_another_id_joins_nothing(run_cli, tmp_path):
    """An --input whose lines moved since the run: the rows whose line names another id
    get no data columns, and the export says how many."""
    data = items(6)
    src = write_jsonl(tmp_path / "in.jsonl", data)
    out = tmp_path / "out.jsonl"
    run(run_cli, src, out)
    moved = write_jsonl(tmp_path / "moved.jsonl", [data[1], data[0], *data[2:]])
    result = run_cli("export", out, "-o", tmp_path / "t.csv", "--input", moved, "--id-field", "id")
    assert result.exit_code == 0, result.output
    assert "2 rows without data columns" in result.stderr


def test_the_parquet_schema_widens_when_later_rows_differ(tmp_path):
    """Row groups of 2: a column null in the first group and text later, integers that
    become floats, a struct that gains a field: one file of the widest schema, every row
    kept; a column holding numbers and then text is an error naming it."""
    rows = [{"a": None, "b": 1, "c": {"x": 1}}, {"a": None, "b": 2, "c": {"x": 2}},
            {"a": "text", "b": 2.5, "c": {"x": 3, "y": "new"}}, {"b": 4}]  # fmt: skip
    path = tmp_path / "w.parquet"
    assert write_parquet(path, rows, ["a", "b", "c"], group_rows=2) == 4
    table = pq.read_table(path)
    assert table.schema.field("a").type == pa.string() and table.schema.field("b").type == pa.float64()
    assert table.column("b").to_pylist() == [1.0, 2.0, 2.5, 4.0]
    assert table.column("c").to_pylist()[2] == {"x": 3, "y": "new"}
    assert not list(tmp_path.glob("*.exporting*"))
    with pytest.raises(ConfigError, match="column 'b' holds values of different types"):
        write_parquet(tmp_path / "bad.parquet", [{"b": 1}, {"b": 2}, {"b": "three"}], ["b"], group_rows=2)
    assert not (tmp_path / "bad.parquet").exists() and not list(tmp_path.glob("*.exporting*"))


def test_export_refuses_what_it_cannot_do(run_cli, tmp_path, monkeypatch):
    """A name that says no format, a missing file, and Parquet without pyarrow: exit 2,
    one line (the install line for pyarrow)."""
    src = write_jsonl(tmp_path / "in.jsonl", items(3))
    out = tmp_path / "out.jsonl"
    run(run_cli, src, out)
    result = run_cli("export", out, "-o", tmp_path / "t.txt")
    assert result.exit_code == 2 and "--to must be csv, parquet or jsonl" in result.stderr
    result = run_cli("export", tmp_path / "nope.jsonl", "-o", tmp_path / "t.csv")
    assert result.exit_code == 2 and "file not found" in result.stderr
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    result = run_cli("export", out, "-o", tmp_path / "t.parquet")
    assert result.exit_code == 2 and "pip install 'llmbatch[parquet]'" in result.stderr
