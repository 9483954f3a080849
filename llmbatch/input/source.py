"""The one pass over the input: lines in, `Request | InputError` out, with line numbers.

`run`, `estimate` and the preflight all read the input through a `Source`:

- ``-`` is standard input; a pipe, a FIFO or ``/dev/stdin`` is read once, front to
  back, and copied to a temporary *spool* as it goes, so that a later pass (the exact
  duplicate check, a rerun's pre-pass) reads the copy; a regular file is simply read
  again.
- gzip and zstd input is decompressed, told by its first bytes (a ``.gz`` name is not
  needed, and a pipe works too).
- CSV, TSV and Parquet (`llmbatch.input.tables`, told by the name or the first bytes, or
  by ``--input-format``) are read as lines of JSON, one a row, and flow on as JSONL does.
- blank lines are skipped and counted, never rejects; a UTF-8 BOM at the start is
  dropped.
- a line that is not a JSON object, or cannot become a request, is an `InputError`
  (a reject) with its line number; the run goes on.
- a setup mistake that every row makes (no model anywhere, a template field or an id
  field that no row has) is a `ConfigError` before anything is sent: judged on the
  first parseable items (`PREFLIGHT_ITEMS`, or all if fewer) failing the same way.

Duplicate custom_ids are found with 32-bit fingerprints (half the memory of full
hashes, which matters at millions of lines). A fingerprint seen before only makes a
line a suspect: suspects wait until the end of the input, when one more pass tells
true duplicates from the few chance matches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import stat
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Container, Generator, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol, cast

from llmbatch.core.errors import ConfigError, InputError
from llmbatch.core.stats import Stats
from llmbatch.core.values import Request
from llmbatch.files.idset import IdSet
from llmbatch.files.jsonl import BOM, GZIP_MAGIC, ZSTD_MAGIC, count_lines, decompressed, parse_line
from llmbatch.input.build import SETUP_KINDS, RequestBuilder
from llmbatch.input.tables import (
    TableOptions,
    count_csv_rows,
    csv_lines,
    input_format,
    parquet_lines,
    parquet_rows,
    parse_row,
)

__all__ = ["PREFLIGHT_ITEMS", "Partition", "Preflight", "Source"]

STDIN = "-"
# A setup mistake is judged on this many parseable items (all, if there are fewer).
PREFLIGHT_ITEMS = 10
# ... found within this many lines: a file of garbage is not read whole up front.
PREFLIGHT_LINES = 1000


class Partition(Protocol):
    """The share of the input this process takes (``--shard K/N``: see
    :class:`llmbatch.scale.shard.Shard`)."""

    @property
    def count(self) -> int:
        """How many shares the input is cut into."""
        ...

    def has_id(self, custom_id: str) -> bool:
        """Whether the item with this custom_id is this share's."""
        ...

    def has_line(self, line: int) -> bool:
        """Whether a line that is not an item (a reject, a blank line) is this share's."""
        ...


class Preflight:
    """What the first items of the input say before anything is sent."""

    __slots__ = ("first_item", "first_request", "model")

    def __init__(
        self, first_item: dict[str, Any] | None, model: str | None, first_request: Request | None = None
    ) -> None:
        self.first_item = first_item  # the first parseable object, for validators' preflight
        self.model = model  # the first buildable request's model, for the price
        self.first_request = first_request


class Source:
    """An input file (or ``-``), to be read as requests.

    The first pass reads the input itself; later passes read it again (a regular
    file) or read the spool (anything else)."""

    def __init__(
        self,
        spec: str | Path,
        builder: RequestBuilder,
        *,
        number_duplicates: bool = False,
        shard: Partition | None = None,
        tables: TableOptions | None = None,
    ) -> None:
        self.spec = str(spec)
        self.builder = builder
        self.number_duplicates = number_duplicates
        # --shard: requests() yields only this shard's items and rejects (llmbatch.scale.shard);
        # every line is still read, so duplicates are told apart across the whole input.
        self.shard = shard
        self.path: Path | None = None if self.spec == STDIN else Path(self.spec)
        self.name = "standard input" if self.path is None else self.spec
        self._rereadable: bool | None = None
        self._head: list[tuple[int, bytes]] = []  # lines read ahead by the preflight
        self._stream: Generator[tuple[int, bytes]] | None = None
        self._spool: IO[bytes] | None = None
        self._spooled = False  # the whole input has reached the spool
        self.renamed: dict[int, str] = {}  # duplicates given a #LINE name, by line
        self.tables = tables or TableOptions()
        self._format: str | None = None

    # --- opening -------------------------------------------------------------------

    def check(self) -> None:
        """Fail with a one-line error if the input cannot be read at all."""
        path = self.path
        if path is None:
            self.format  # noqa: B018 (Parquet is refused on standard input)
            return
        if not path.exists():
            raise ConfigError(f"input file not found: {path}")
        if path.is_dir():
            raise ConfigError(f"input is a directory, not a file: {path}")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"cannot read input file {path}: Permission denied")
        if self.format == "parquet":
            parquet_rows(path)  # pyarrow installed, and the file a Parquet file

    @property
    def format(self) -> str:
        """What the input is read as: jsonl, csv, tsv or parquet."""
        if self._format is None:
            self._format = input_format(self.path, self.tables)
        return self._format

    def _parser(self) -> Callable[[int, bytes], dict[str, Any]]:
        """A line to its object: a JSON line parsed; a table's row may be a reject already."""
        return parse_line if self.format == "jsonl" else parse_row

    @property
    def rereadable(self) -> bool:
        """Whether the input can be opened again (a regular file), rather than spooled."""
        if self._rereadable is None:
            try:
                self._rereadable = self.path is not None and stat.S_ISREG(os.stat(self.path).st_mode)
            except OSError:
                self._rereadable = False
        return self._rereadable

    def same_file(self, other: Path) -> bool:
        """Whether `other` is this input (writing the output over it would lose it)."""
        if self.path is None or not other.exists():
            return False
        try:
            return os.path.samefile(self.path, other)
        except OSError:
            return False

    def _open(self) -> BinaryIO:
        form = self.format
        if form == "parquet":
            assert self.path is not None  # input_format refuses standard input
            return cast(BinaryIO, parquet_lines(self.path))
        if self.path is None:
            f = decompressed(sys.stdin.buffer)
        else:
            try:
                raw = self.path.open("rb")
            except OSError as exc:
                raise ConfigError(f"cannot read input file {self.path}: {exc.strerror}") from None
            try:
                f = decompressed(raw)
            except OSError as exc:
                raw.close()
                raise ConfigError(f"cannot read input file {self.path}: {exc}") from None
        if form == "jsonl":
            return f
        delimiter, encoding = self.tables.delimiter_for(form), self.tables.encoding
        return cast(BinaryIO, csv_lines(f, name=self.name, delimiter=delimiter, encoding=encoding))

    def count(self) -> int | None:
        """Lines in the input when that is cheap to know up front (a plain regular
        file: about a second a GB), else None."""
        if not self.rereadable or self.path is None:
            return None
        form = self.format
        if form == "parquet":
            return parquet_rows(self.path)
        try:
            with self.path.open("rb") as f:
                if f.read(4).startswith((GZIP_MAGIC, ZSTD_MAGIC)):
                    return None
            if form != "jsonl":
                delimiter, encoding = self.tables.delimiter_for(form), self.tables.encoding
                return count_csv_rows(self.path, delimiter=delimiter, encoding=encoding)
            return count_lines(self.path)
        except OSError as exc:
            raise ConfigError(f"cannot read input file {self.path}: {exc.strerror}") from None

    # --- lines -----------------------------------------------------------------------

    def _read(self, f: BinaryIO, spool: IO[bytes] | None) -> Generator[tuple[int, bytes]]:
        with f:
            numbered = enumerate(f, 1)
            for number, raw in numbered:  # the first line: it may start with a BOM
                if spool is not None:
                    spool.write(raw)
                yield number, raw.removeprefix(BOM).rstrip(b"\r\n")
                break
            # The rest, in loops of their own: this runs once per line.
            if spool is None:
                for number, raw in numbered:
                    yield number, raw.rstrip(b"\r\n")
            else:
                for number, raw in numbered:
                    spool.write(raw)
                    yield number, raw.rstrip(b"\r\n")
        if spool is not None:
            spool.flush()
            self._spooled = True

    def _first_stream(self) -> Iterator[tuple[int, bytes]]:
        if self._stream is None:
            spool = None
            if not self.rereadable:
                self._spool = spool = tempfile.TemporaryFile(prefix="llmbatch-spool-")  # noqa: SIM115
            self._stream = self._read(self._open(), spool)
        return self._stream

    def lines(self) -> Iterator[tuple[int, bytes]]:
        """Every line of the input with its number (1-based), newline stripped. The
        first call reads the input itself; later calls read it again."""
        if self._stream is None or self._head:
            head, self._head = self._head, []
            return itertools.chain(head, self._first_stream())  # no generator level per line
        return self._reread()

    def _reread(self) -> Iterator[tuple[int, bytes]]:
        if self.rereadable:
            yield from self._read(self._open(), None)
            return
        for _ in self._first_stream():  # a pass left unfinished: the spool needs the rest
            pass
        spool = self._spool
        assert spool is not None and self._spooled
        spool.seek(0)
        # A new file object on the same descriptor: a pass must not move another's place.
        again = os.fdopen(os.dup(spool.fileno()), "rb")
        yield from self._read(again, None)

    def objects(self) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """Every line's object with its number, None for a blank or bad line (what
        `llmbatch export --input` joins to an output's lines)."""
        parse = self._parser()
        for number, raw in self.lines():
            try:
                yield number, parse(number, raw) if raw.strip() else None
            except InputError:
                yield number, None

    def close(self) -> None:
        """Close the input and remove the spool."""
        if self._stream is not None:
            self._stream.close()
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    # --- before anything is sent ---------------------------------------------------

    def preflight(self) -> Preflight:
        """Read ahead to the first parseable items (kept for the first pass) and refuse
        a setup mistake that all of them make: one usage error instead of a reject per
        row."""
        stream = self._first_stream()
        parse = self._parser()
        items: list[tuple[int, dict[str, Any]]] = []
        for number, raw in stream:
            self._head.append((number, raw))
            if raw.strip():
                with contextlib.suppress(InputError):
                    items.append((number, parse(number, raw)))
            if len(items) >= PREFLIGHT_ITEMS or len(self._head) >= PREFLIGHT_LINES:
                break
        model: str | None = None
        first: Request | None = None
        errors: list[InputError] = []
        for number, item in items:
            try:
                req = self.builder.build(number, item)
            except InputError as err:
                errors.append(err)
                continue
            first = first or req
            if model is None and isinstance(req.body.get("model"), str):
                model = req.body["model"]
        kinds = {e.kind for e in errors}
        if items and len(errors) == len(items) and len(kinds) == 1 and (kind := kinds.pop()) in SETUP_KINDS:
            which = "the only item" if len(items) == 1 else f"all of the first {len(items)} items"
            hint = f" ({SETUP_KINDS[kind]})" if SETUP_KINDS[kind] else ""
            why = f"{errors[0]}{hint}"
            raise ConfigError(f"{which} in {self.name} fail the same way: {why}; nothing was sent")
        return Preflight(items[0][1] if items else None, model, first)

    # --- requests --------------------------------------------------------------------

    def requests(
        self,
        *,
        expected: int = 0,
        wanted: Callable[[Request], bool] | None = None,
        stats: Stats | None = None,
    ) -> Iterator[Request | InputError]:
        """The input's requests (and rejects) in input order, each id once.

        `wanted` picks the requests to yield (a resume skips what is done); the rest
        are still read, so duplicates are told the same way whatever is skipped.
        `expected` sizes the duplicate table (the line count, when known). Blank lines
        are counted into `stats`. With a shard, only its items and rejects come out."""
        seen = IdSet(expected, bits=32)
        suspects: list[Request] = []
        build, parse = self.builder.build, self._parser()
        mine = self._mine if self.shard is not None else None  # no shard: all is ours
        for number, raw in self.lines():
            if not raw or raw.isspace():
                if stats is not None and (self.shard is None or self.shard.has_line(number)):
                    stats.blank += 1
                continue
            try:
                req = build(number, parse(number, raw))
            except InputError as err:
                if mine is None or mine(err):
                    yield err
                continue
            if not seen.add(req.custom_id):
                suspects.append(req)
                continue
            if (wanted is None or wanted(req)) and (mine is None or mine(req)):
                yield req
        if suspects:
            yield from self._settle_suspects(suspects, wanted)

    def planned(
        self,
        todo: Container[int],
        bad: Container[int],
        dupes: Mapping[int, str],
        renamed: Mapping[int, str],
        *,
        until: int | None = None,
    ) -> Iterator[Request | InputError]:
        """A rerun's main pass, after a pre-pass decided: lines in `todo` become
        requests (renamed as `renamed` says), lines in `bad` and `dupes` rejects; every
        other line is passed over without being parsed. `until`: the last line to read."""
        build, parse = self.builder.build, self._parser()
        for number, raw in self.lines():
            if until is not None and number > until:
                return
            if number in dupes:
                yield InputError(dupes[number], line=number, kind="duplicate")
            elif number in todo or number in bad:
                try:
                    req = build(number, parse(number, raw))
                except InputError as err:
                    yield err
                    continue
                if number in renamed:
                    req = dataclasses.replace(req, custom_id=renamed[number])
                yield req

    def _settle_suspects(
        self, suspects: list[Request], wanted: Callable[[Request], bool] | None
    ) -> Iterator[Request | InputError]:
        first = self._first_lines({r.custom_id for r in suspects})
        dupes = [r for r in suspects if first.get(r.custom_id, r.line) < r.line]
        names = self._numbered_ids(dupes) if self.number_duplicates and dupes else {}
        self.renamed.update(names)
        for req in suspects:
            if first.get(req.custom_id, req.line) < req.line:
                if not self.number_duplicates:
                    err = InputError(
                        f"duplicate custom_id {req.custom_id!r} (line {first[req.custom_id]} has it)",
                        line=req.line,
                        kind="duplicate",
                    )
                    if self._mine(err):
                        yield err
                    continue
                req = dataclasses.replace(req, custom_id=names[req.line])
            if (wanted is None or wanted(req)) and self._mine(req):
                yield req

    def _mine(self, item: Request | InputError) -> bool:
        """Whether an item (by its id) or a reject (by its line) is this shard's."""
        shard = self.shard
        if shard is None:
            return True
        if isinstance(item, InputError):
            return shard.has_line(item.line)
        return shard.has_id(item.custom_id)

    def _numbered_ids(self, dupes: list[Request]) -> dict[int, str]:
        """`ID#LINE` for each duplicate (by line), made longer while another input line,
        or another duplicate, already has that name: the output's ids stay unique, and
        the same input gets the same names on every rerun, so a resume recognises them."""
        names = {r.line: f"{r.custom_id}#{r.line}" for r in dupes}
        while True:
            taken = self._first_lines(set(names.values()))
            counts = Counter(names.values())
            clash = [line for line, name in names.items() if name in taken or counts[name] > 1]
            if not clash:
                return names
            for line in clash:
                names[line] += f"#{line}"

    def _first_lines(self, ids: set[str]) -> dict[str, int]:
        """The first line that has each of `ids`, by reading the input again. Only the
        ids are read (building every request again would cost a whole pre-pass); a line
        with a matching id is built, to tell an item from a reject."""
        first: dict[str, int] = {}
        builder, parse = self.builder, self._parser()
        for number, raw in self._reread():
            if not raw.strip():
                continue
            try:
                obj = parse(number, raw)
                cid = builder.custom_id(number, obj)
                if cid not in ids or cid in first:
                    continue
                builder.build(number, obj)
            except InputError:
                continue
            first[cid] = number
            if len(first) == len(ids):
                break
        return first
