"""`llmbatch export OUT... --to csv|parquet|jsonl -o FILE`: finished outputs as one table,
a row per id.

The rows are the newest line of each id (the files count oldest first, as for `merge`:
`llmbatch.output.rewrite`), in the files' order or, with ``--ordered``, in input order.
A merged row is taken as it is; a Batch-shaped line gives the ``llm_*`` columns
(`llmbatch.output.flat`), and with ``--input IN`` the data columns of its input line,
joined on the line number each output line carries and checked against the custom_id
where the input line names one (a Batch line's ``custom_id``, a body's ``metadata.id`` or
``id``, the ``--id-field`` column): the rows come in input order then. Every row gets
``llm_cost_usd`` (None when the model has no price); ``--spread`` adds one
``llm_answer.PROP`` column per top-level property of JSON object answers.

CSV and Parquet need every column before the first row: the rows are made once into a
spool (JSON lines, in a temporary folder) while their columns are gathered (the data
columns first, in the order first seen, then the ``llm_*`` ones, then the spread ones),
and the table is written from the spool. Memory is bounded: the rewrite's one number per
id, a Parquet row group (`llmbatch.files.tables`), the columns' names.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from llmbatch.app.checks import check_files
from llmbatch.core.errors import ConfigError
from llmbatch.cost.prices import Prices, cost
from llmbatch.files import tables
from llmbatch.files.locking import OutputLock
from llmbatch.input.build import RequestBuilder
from llmbatch.input.source import Source
from llmbatch.input.tables import TableOptions
from llmbatch.output.flat import SPREAD_PREFIX, batch_row, spread
from llmbatch.output.readback import record_of
from llmbatch.output.rewrite import kept_lines, select
from llmbatch.validate.validator import extract_json

__all__ = ["Exported", "Join", "export_table"]

ExportFormat = Literal["csv", "parquet", "jsonl"]
# The Parquet types of the llm_* columns that the first rows may all leave null (all valid
# so far: no error), so that a failure later needs no widening of the schema.
_TEXT = ("llm_error", "llm_error_code", "llm_fault", "llm_finish_reason", "llm_cause", "llm_model",
         "llm_batch_id", "llm_custom_id", "llm_fp", "llm_server", "llm_via", "llm_state")  # fmt: skip
NULL_TYPES = {
    **dict.fromkeys(_TEXT, "string"),
    **dict.fromkeys(("llm_cost_usd", "llm_latency_ms"), "double"),
    **dict.fromkeys(("llm_line", "llm_requests", "llm_prompt_tokens", "llm_completion_tokens"), "int64"),
    "llm_t": "int64",
}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Join:
    """Where the data columns of Batch-shaped lines come from (``--input``)."""

    input: Path
    tables: TableOptions = field(default_factory=TableOptions)
    id_field: str | None = None


@dataclass(slots=True)
class Exported:
    """What an export did."""

    rows: int = 0
    columns: int = 0
    dropped: int = 0  # older lines of an id that has a newer one
    other: int = 0  # lines that are not llmbatch output lines, left out
    unmatched: int = 0  # rows whose input line names another id (no data columns)
    notes: list[str] = field(default_factory=list)


def export_table(
    inputs: Sequence[Path],
    output: Path,
    *,
    to: ExportFormat,
    ordered: bool = False,
    spread_answers: bool = False,
    join: Join | None = None,
    price_in: float | None = None,
    price_out: float | None = None,
) -> Exported:
    """Write the rows of `inputs` to `output` as `to` (see the module docstring)."""
    _check(inputs, output)
    done = Exported()
    with contextlib.ExitStack() as stack:
        for path in dict.fromkeys(p.resolve() for p in inputs):
            stack.enter_context(OutputLock(path))
        chosen = select(inputs)
        chosen.check_one_format("export")
        done.dropped = chosen.dropped
        batch = "batch" in chosen.formats
        if join is not None and not batch:
            done.notes.append("--input left unused: merged rows carry their data columns")
            join = None
        lines = kept_lines(inputs, chosen, ordered=ordered or join is not None)
        rows = _rows(
            lines, done, spread_answers=spread_answers, prices=Prices(price_in=price_in, price_out=price_out)
        )
        if join is not None:
            rows = _joined(rows, join, done)
        if to == "jsonl":
            done.rows = tables.write_jsonl(output, rows)
            return done
        with tempfile.TemporaryDirectory(prefix="llmbatch-export-") as folder:
            spool = Path(folder) / "rows.jsonl"
            columns = _spooled(rows, spool)
            done.columns = len(columns)
            if to == "csv":
                done.rows = tables.write_csv(output, _read_spool(spool), columns)
            else:
                done.rows = tables.write_parquet(output, _read_spool(spool), columns, null_types=NULL_TYPES)
    return done


def _check(inputs: Sequence[Path], output: Path) -> None:
    check_files(inputs, output, none="export needs at least one output file to read")
    for path in inputs:
        if output.exists() and output.resolve() == path.resolve():
            raise ConfigError(f"the table would be written over {path}, which it reads: choose another -o")


def _cost(row: dict[str, Any], prices: Prices) -> float | None:
    prompt = int(row.get("llm_prompt_tokens") or 0)
    completion = int(row.get("llm_completion_tokens") or 0)
    if not (prompt or completion):
        return 0.0
    model = row.get("llm_model")
    price = prices.of(model if isinstance(model, str) else None, batch=row.get("llm_via") == "batch")
    cached, written = int(row.get("llm_cached_tokens") or 0), int(row.get("llm_cache_write_tokens") or 0)
    spent = cost(price, prompt, completion, cached, written)
    return None if spent is None else round(spent, 8)


def _rows(
    lines: Iterator[bytes], done: Exported, *, spread_answers: bool, prices: Prices
) -> Iterator[dict[str, Any]]:
    for raw in lines:
        ours = record_of(raw)
        if ours is None:
            done.other += 1
            continue
        rec, line = ours
        row = rec if line.format == "merged" else batch_row(rec)
        row["llm_cost_usd"] = _cost(row, prices)
        if spread_answers:
            spread(row, extract_json)
        yield row


def _joined(rows: Iterator[dict[str, Any]], join: Join, done: Exported) -> Iterator[dict[str, Any]]:
    """`rows` (in input line order) with the data columns of their input lines."""
    source = Source(join.input, RequestBuilder(), tables=join.tables)
    source.check()
    try:
        objects = source.objects()
        number, obj = 0, None
        for row in rows:
            line = row.get("llm_line")
            if isinstance(line, int):
                while number < line:
                    number, obj = next(objects, (1 << 62, None))
            data = _data(obj, row, join) if isinstance(line, int) and number == line else None
            if data is None:
                done.unmatched += 1
                yield row
            else:
                yield {**data, **row}
    finally:
        source.close()


def _data(obj: dict[str, Any] | None, row: dict[str, Any], join: Join) -> dict[str, Any] | None:
    """The data columns of an input line for `row`, None when the line names another id."""
    if obj is None:
        return None
    cid = row.get("llm_custom_id")
    if "custom_id" in obj and "body" in obj:  # a Batch API line: no data of its own
        return {} if obj["custom_id"] == cid else None
    metadata = obj.get("metadata")
    if "messages" in obj or isinstance(metadata, dict):  # a bare body: its metadata
        data = dict(metadata) if isinstance(metadata, dict) else {}
        named = data.get("id", obj.get("id"))
        return data if named is None or str(named) == cid or cid == f"line-{row['llm_line']}" else None
    if join.id_field is not None:
        value = obj.get(join.id_field)
        return obj if value is not None and str(value) == cid else None
    return obj


def _spooled(rows: Iterator[dict[str, Any]], spool: Path) -> list[str]:
    """Write `rows` to `spool` as JSON lines; returns their columns, in order."""
    data: dict[str, None] = {}
    ours: dict[str, None] = {}
    spread_cols: dict[str, None] = {}
    with spool.open("wb") as f:
        for row in rows:
            for key in row:
                if key not in data and key not in ours and key not in spread_cols:
                    if key.startswith(SPREAD_PREFIX):
                        spread_cols[key] = None
                    elif key.startswith("llm_"):
                        ours[key] = None
                    else:
                        data[key] = None
            f.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
    return [*data, *ours, *spread_cols]


def _read_spool(spool: Path) -> Iterator[dict[str, Any]]:
    with spool.open("rb") as f:
        for raw in f:
            yield orjson.loads(raw)
