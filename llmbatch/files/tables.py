"""Rows (dicts) written as a table: CSV, Parquet or JSONL, replacing the target whole.

- CSV: a header of the columns given, one record per row; a missing value or null is an
  empty field, true/false as such, lists and objects as JSON text. Compressed when the
  name ends in ``.gz`` or ``.zst``.
- Parquet (pyarrow, the optional extra ``llmbatch[parquet]``): the schema is inferred
  from the first `GROUP_ROWS` rows, written as row groups of that many, so memory holds
  one group. A later group that does not fit (a column null so far that now
  holds values, integers that become floats, a struct that gains a field) widens the
  schema: the groups go on in a part file of the wider schema, and at the end the parts
  are rewritten into one file of the widest (Arrow's permissive promotion). Values that no
  one type can hold (numbers in one row, text in another) are a ConfigError naming the
  column.
- JSONL: one object a row, as is.

The table is written to a temporary file beside the target and renamed over it, so a
failure leaves no half table.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from llmbatch.core.errors import ConfigError
from llmbatch.files import atomic, sidecars
from llmbatch.files.jsonl import codec_for, write_lines

__all__ = ["GROUP_ROWS", "PARQUET_INSTALL", "import_pyarrow", "write_csv", "write_jsonl", "write_parquet"]

# Rows per Parquet row group, the memory a write holds at once; the first group's types
# make the schema (a buffer of some thousands of rows).
GROUP_ROWS = 5000
PARQUET_INSTALL = "pip install 'llmbatch[parquet]'"


def _temp(path: Path) -> Path:
    return sidecars.beside(path, ".exporting")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


def _csv_lines(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> Iterator[bytes]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
        if buf.tell() >= 1 << 16:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


def write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> int:
    """Write `rows` as CSV with the header `columns`. Returns the number of rows."""
    counted = _Counted(rows)
    with atomic.replace(path, temp=_temp(path)) as dst:
        write_lines(dst, _csv_lines(counted, columns), codec_for(path))
    return counted.n


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write `rows` as JSON lines. Returns the number of rows."""
    with atomic.replace(path, temp=_temp(path)) as dst:
        return write_lines(
            dst, (orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows), codec_for(path)
        )


class _Counted:
    def __init__(self, rows: Iterable[dict[str, Any]]) -> None:
        self.rows, self.n = rows, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self.rows:
            self.n += 1
            yield row


# --- Parquet ---------------------------------------------------------------------------


def import_pyarrow() -> Any:
    """pyarrow (with its parquet module), imported on the first need; a ConfigError with
    the install line without it.

    Its memory comes from the system allocator unless the environment chose one
    (``ARROW_DEFAULT_MEMORY_POOL``): pyarrow's default pool keeps the memory of batches
    already read or written, which grew a read of 100,000 rows by ~28 MB (measured)."""
    if "pyarrow" not in sys.modules:
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ConfigError(f"reading or writing Parquet needs pyarrow: {PARQUET_INSTALL}") from None
    return pyarrow


def _groups(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    group: list[dict[str, Any]] = []
    for row in rows:
        group.append(row)
        if len(group) >= size:
            yield group
            group = []
    if group:
        yield group


def write_parquet(
    path: Path,
    rows: Iterable[dict[str, Any]],
    columns: Sequence[str],
    *,
    group_rows: int = GROUP_ROWS,
    null_types: Mapping[str, str] | None = None,
) -> int:
    """Write `rows` as Parquet with `columns` (see the module docstring). `null_types`:
    the type (an Arrow type name: ``string``, ``double``...) of a column that is null
    in all of the first rows, instead of widening later. Returns the number of rows."""
    pa = import_pyarrow()
    parts: list[tuple[Path, Any]] = []  # part files and their schemas, the last one open
    writer: Any = None
    schema: Any = None
    n = 0
    temp = _temp(path)
    try:
        for group in _groups(rows, group_rows):
            table = _table(pa, group, columns, schema)
            if schema is None and null_types:
                table = _typed_nulls(pa, table, null_types)
            if schema is None or not table.schema.equals(schema):
                schema = table.schema if schema is None else _widened(pa, schema, table.schema)
                table = table.cast(schema) if not table.schema.equals(schema) else table
                if writer is not None:
                    writer.close()
                part = temp if not parts else sidecars.beside(path, f".exporting.{len(parts)}")
                writer = pa.parquet.ParquetWriter(part, schema)
                parts.append((part, schema))
            writer.write_table(table, row_group_size=group_rows)
            n += len(group)
        if writer is None:  # no rows: a table of the columns, typed null
            schema = pa.schema([(c, pa.null()) for c in columns])
            pa.parquet.write_table(pa.table({c: [] for c in columns}, schema=schema), temp)
            parts.append((temp, schema))
        else:
            writer.close()
            writer = None
        if len(parts) > 1:
            _join(pa, parts, temp, schema, path)
        os.replace(temp, path)
        atomic.sync_dir(path.parent)
    finally:
        if writer is not None:
            writer.close()
        for part, _ in parts:
            part.unlink(missing_ok=True)
    return n


def _table(pa: Any, group: list[dict[str, Any]], columns: Sequence[str], schema: Any) -> Any:
    """The rows as a table of `schema` when they fit it, else of their own types."""
    if schema is not None:
        try:
            return pa.Table.from_pylist(group, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
    data = {c: [row.get(c) for row in group] for c in columns}
    try:
        return pa.table(data)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        for c in columns:  # name the column whose values no one type holds
            try:
                pa.array(data[c])
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                raise ConfigError(_mixed(c, str(exc))) from None
        raise ConfigError(f"cannot write Parquet: {exc}") from None


def _typed_nulls(pa: Any, table: Any, types: Mapping[str, str]) -> Any:
    fields = [
        pa.field(f.name, pa.type_for_alias(types[f.name]))
        if pa.types.is_null(f.type) and f.name in types
        else f
        for f in table.schema
    ]
    schema = pa.schema(fields)
    return table if schema.equals(table.schema) else table.cast(schema)


def _widened(pa: Any, schema: Any, other: Any) -> Any:
    try:
        return pa.unify_schemas([schema, other], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        for fld in other:
            before = schema.field(fld.name).type
            try:
                pa.unify_schemas(
                    [pa.schema([(fld.name, before)]), pa.schema([fld])], promote_options="permissive"
                )
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                raise ConfigError(_mixed(fld.name, f"{before} in earlier rows, {fld.type} later")) from None
        raise ConfigError(f"cannot write Parquet: {exc}") from None


def _mixed(column: str, why: str) -> str:
    return (
        f"column {column!r} holds values of different types ({why}): Parquet needs one type a "
        "column; export --to csv or jsonl"
    )


def _join(pa: Any, parts: list[tuple[Path, Any]], temp: Path, schema: Any, path: Path) -> None:
    """The part files, cast to the widest schema, as one file at `temp` (the first part's
    name: it is written to a new file first)."""
    joined = sidecars.beside(path, ".exporting.joined")
    try:
        with pa.parquet.ParquetWriter(joined, schema) as writer:
            for part, _ in parts:
                f = pa.parquet.ParquetFile(part)
                for batch in f.iter_batches(batch_size=GROUP_ROWS, use_threads=False):
                    try:
                        table = pa.Table.from_batches([batch]).cast(schema)
                    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                        raise ConfigError(f"cannot widen the Parquet schema: {exc}") from None
                    writer.write_table(table)
        os.replace(joined, temp)
    finally:
        joined.unlink(missing_ok=True)
