"""Tables as input: CSV and TSV (the standard library's csv, with a header row) and
Parquet (pyarrow, the optional extra ``llmbatch[parquet]``, read a record batch at a
time so memory stays flat).

Each row becomes the JSON object it stands for, one line of JSON bytes, and from there
flows as a JSONL line does (`llmbatch.input.source`): the same builder, rejects,
duplicates, reruns and shards, and standard input's spool holds those lines. Column
names are the fields; rows are numbered by record, the header excluded (row 1 is the
first data row, also when a quoted field spans lines; a blank line is a blank row). CSV
values are strings; Parquet values keep their types, and those JSON cannot hold are
written as text: decimals as strings, timestamps and dates in ISO 8601, bytes in
base64, durations as seconds.

A row that cannot be read (more or fewer fields than the header, bytes that are not
of the encoding) is a reject naming its row, as a bad JSONL line is: the table reader
hands it on as a line starting with `_BAD` and the message, which `parse_row` raises.
"""

from __future__ import annotations

import base64
import codecs
import csv
import datetime
import decimal
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson

from llmbatch.core.errors import ConfigError, InputError
from llmbatch.files.jsonl import parse_line
from llmbatch.files.tables import PARQUET_INSTALL, import_pyarrow

__all__ = [
    "DEFAULT_CSV_ENCODING",
    "INPUT_FORMATS",
    "PARQUET_INSTALL",
    "InputFormat",
    "TableLines",
    "TableOptions",
    "count_csv_rows",
    "csv_lines",
    "input_format",
    "parquet_lines",
    "parquet_rows",
    "parse_row",
]

InputFormat = Literal["auto", "jsonl", "csv", "tsv", "parquet"]
INPUT_FORMATS: tuple[str, ...] = ("auto", "jsonl", "csv", "tsv", "parquet")
# utf-8 that drops a byte-order mark (spreadsheets write one).
DEFAULT_CSV_ENCODING = "utf-8-sig"
# Rows per Parquet record batch, and the bytes read from the file at a time: pages are
# then decoded as the batches need them, not a row group's column chunks at once. On a
# 1,000,000-row file of 50,000-row groups, 2,048 rows unbuffered peaked at 78.4 MB and 512
# rows through 64 KB reads at 74.3 MB, for the same CPU time (measured).
PARQUET_BATCH_ROWS = 512
PARQUET_READ_BUFFER = 64 * 1024

_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_COMPRESSED = (".gz", ".zst", ".zstd")
PARQUET_MAGIC = b"PAR1"
# The csv module refuses a field over 128 KB by default; a long document in one cell is fine.
FIELD_LIMIT = 2**31 - 1
# A row that could not be read: this byte, then the reason (a JSON line never starts so).
_BAD = b"\x00"


@dataclass(frozen=True, slots=True, kw_only=True)
class TableOptions:
    """How the input is read: its format (``auto``: told by the name, else by the first
    bytes), and for CSV its delimiter (``,``; TSV's a tab) and encoding."""

    format: InputFormat = "auto"
    delimiter: str | None = None
    encoding: str = DEFAULT_CSV_ENCODING

    def __post_init__(self) -> None:
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ConfigError(
                f"--csv-delimiter must be one character (\\t for a tab), not {self.delimiter!r}"
            )
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ConfigError(f"--csv-encoding: unknown encoding {self.encoding!r}") from None

    def delimiter_for(self, form: str) -> str:
        return self.delimiter if self.delimiter is not None else "\t" if form == "tsv" else ","


def input_format(path: Path | None, options: TableOptions) -> Literal["jsonl", "csv", "tsv", "parquet"]:
    """The format to read `path` as (None: standard input, JSONL unless told)."""
    form: str = options.format
    if form == "auto":
        form = _by_name(path) if path is not None else "jsonl"
        if form == "auto" and path is not None:
            # Only a regular file is peeked at: a named pipe's bytes are read once.
            form = "parquet" if path.is_file() and _first_bytes(path) == PARQUET_MAGIC else "jsonl"
    if form == "parquet" and path is None:
        raise ConfigError("Parquet is not read from standard input (it is read from its end): give the file")
    return form  # type: ignore[return-value]


def _by_name(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes.pop()
    if suffixes and suffixes[-1] in (".parquet", ".pq") and len(path.suffixes) > len(suffixes):
        raise ConfigError(
            f"{path}: a Parquet file is compressed inside (its columns): give it as it is, uncompressed"
        )
    return _SUFFIXES.get(suffixes[-1], "auto") if suffixes else "auto"


def _first_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(4)
    except OSError:
        return b""


def parse_row(number: int, raw: bytes) -> dict[str, Any]:
    """`parse_line` for a table's lines: a row that could not be read is its reject."""
    if raw[:1] == _BAD:
        raise InputError(raw[1:].decode("utf-8", "replace"), line=number)
    return parse_line(number, raw)


def _bad(message: str) -> bytes:
    return _BAD + message.replace("\n", " ").encode("utf-8", "replace") + b"\n"


class TableLines:
    """A table's rows as lines of JSON (one a row, each ending in a newline), read as a
    file of lines is: iterated once, and closed (with the file) when done."""

    def __init__(self, rows: Iterator[bytes], f: BinaryIO | None = None) -> None:
        self._rows = rows
        self._f = f

    def __iter__(self) -> Iterator[bytes]:
        return self._rows

    def __enter__(self) -> TableLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        close = getattr(self._rows, "close", None)
        if close is not None:
            close()
        if self._f is not None:
            self._f.close()


# --- CSV -------------------------------------------------------------------------------


def _named(encoding: str) -> str:
    name = codecs.lookup(encoding).name
    return "UTF-8" if name in ("utf-8", "utf-8-sig") else encoding


def _text(f: BinaryIO, encoding: str) -> io.TextIOWrapper:
    # surrogateescape: a byte the encoding cannot read is kept, to make its row a reject
    # (orjson refuses the surrogate) rather than end the read.
    return io.TextIOWrapper(f, encoding=encoding, errors="surrogateescape", newline="")


def _header(reader: Any, name: str, encoding: str) -> list[str] | None:
    try:
        header: list[str] = next(reader)
    except StopIteration:
        return None
    except csv.Error as exc:
        raise ConfigError(f"{name}: cannot read the header row: {exc}") from None
    seen: set[str] = set()
    for column in header:
        if column in seen:
            raise ConfigError(f"{name}: the header names the column {column!r} twice")
        seen.add(column)
        try:
            column.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(
                f"{name}: the header is not valid {_named(encoding)} (give --csv-encoding)"
            ) from None
    return header


def csv_lines(f: BinaryIO, *, name: str, delimiter: str, encoding: str) -> TableLines:
    """The rows of a CSV file (its first row the header) as lines of JSON. A header that
    cannot be read, or names a column twice, is a ConfigError here, before any row."""
    csv.field_size_limit(FIELD_LIMIT)
    text = _text(f, encoding)
    reader = csv.reader(text, delimiter=delimiter, strict=False)
    try:
        header = _header(reader, name, encoding)
    except BaseException:
        text.close()
        raise
    return TableLines(_csv_rows(reader, header, encoding) if header is not None else iter(()), text)  # type: ignore[arg-type]


def _csv_rows(reader: Any, header: list[str], encoding: str) -> Iterator[bytes]:
    dumps, width = orjson.dumps, len(header)
    append = orjson.OPT_APPEND_NEWLINE
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield _bad(f"not a CSV row: {exc}")
            continue
        if len(row) == width:
            try:
                yield dumps(dict(zip(header, row, strict=True)), option=append)
            except orjson.JSONEncodeError:
                yield _bad(f"not valid {_named(encoding)} (give --csv-encoding)")
        elif not row:
            yield b"\n"  # a blank line: a blank row, counted and passed over
        else:
            yield _bad(f"{len(row)} fields, the header has {width}")


def count_csv_rows(path: Path, *, delimiter: str, encoding: str) -> int:
    """Rows in a CSV file (the header not counted), by reading it as `csv_lines` does."""
    with path.open("rb") as f, _text(f, encoding) as text:
        reader = csv.reader(text, delimiter=delimiter, strict=False)
        n = -1
        try:
            for _ in reader:
                n += 1
        except csv.Error:
            return max(n, 0)
    return max(n, 0)


# --- Parquet ---------------------------------------------------------------------------


def _open_parquet(path: Path) -> Any:
    pa = import_pyarrow()
    try:
        return pa.parquet.ParquetFile(path, buffer_size=PARQUET_READ_BUFFER, pre_buffer=False)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"cannot read {path} as Parquet: {exc}") from None


def parquet_rows(path: Path) -> int:
    """Rows in a Parquet file, from its footer."""
    return int(_open_parquet(path).metadata.num_rows)


def parquet_lines(path: Path) -> TableLines:
    """The rows of a Parquet file as lines of JSON, one record batch in memory at a time."""
    pf = _open_parquet(path)
    return TableLines(_parquet_rows(pf, str(path)))


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    raise TypeError(type(value).__name__)


def _parquet_rows(pf: Any, name: str) -> Iterator[bytes]:
    pa = import_pyarrow()
    dumps, default, option = orjson.dumps, _json_default, orjson.OPT_APPEND_NEWLINE
    fine = not any(_nanoseconds(f.type, pa) for f in pf.schema_arrow)
    # A reader a row group: one reader over the whole file kept ~12 MB of buffers of the
    # groups already read, growing a 1,000,000-row read by 13 MB more than this (measured).
    batches = (
        batch
        for group in range(pf.num_row_groups)
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], use_threads=False)
    )
    for batch in batches:
        try:
            rows = (batch if fine else _no_nanoseconds(batch, pa)).to_pylist()
        except (pa.ArrowException, ValueError) as exc:
            raise ConfigError(f"{name}: cannot read a record batch: {exc}") from None
        for row in rows:
            try:
                yield dumps(row, default=default, option=option)
            except orjson.JSONEncodeError as exc:
                yield _bad(f"a value JSON cannot hold: {exc}")


def _nanoseconds(t: Any, pa: Any) -> bool:
    return bool((pa.types.is_timestamp(t) or pa.types.is_duration(t)) and t.unit == "ns")


def _no_nanoseconds(batch: Any, pa: Any) -> Any:
    """`batch` with its nanosecond timestamps as ISO 8601 text and nanosecond durations as
    seconds (Python's datetime and timedelta stop at microseconds)."""
    import pyarrow.compute as pc

    columns = []
    for column, fld in zip(batch.columns, batch.schema, strict=True):
        t = fld.type
        if pa.types.is_timestamp(t) and t.unit == "ns":
            fmt = "%Y-%m-%dT%H:%M:%S%Ez" if t.tz else "%Y-%m-%dT%H:%M:%S"
            column = pc.strftime(column, format=fmt)
        elif pa.types.is_duration(t) and t.unit == "ns":
            column = pc.divide(pc.cast(pc.cast(column, pa.int64()), pa.float64()), 1e9)
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
