"""JSONL in and out: a streaming reader that keeps line numbers, and an appending writer
that only ever leaves whole lines behind, plain or compressed.

A compressed output (``.gz``, ``.zst``) is a chain of gzip members or zstd frames, one
per flush: both formats decode such a chain as one stream (``zcat``, ``zstd -dc``), and
a crash can tear only the last member, which `cut_torn` cuts off before the next run
appends.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import os
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import orjson

from llmbatch.core.errors import ConfigError, InputError

__all__ = [
    "BOM",
    "Codec",
    "JsonlWriter",
    "codec_for",
    "compress_block",
    "count_lines",
    "cut_torn",
    "decompressed",
    "drop_torn_tail",
    "open_lines",
    "parse_line",
    "torn_end",
    "write_failure",
    "write_lines",
]

# Finished lines are handed to the OS in one write at most this long after they finish
# (one syscall per line cost more than the HTTP request itself); a SIGKILL loses at most
# this much work, which the rerun redoes. Ctrl-C and SIGTERM flush everything.
FLUSH_INTERVAL = 0.05
FLUSH_BYTES = 1 << 18
# The OS is asked to put written lines on disk at most this often, and at close.
FSYNC_INTERVAL = 1.0


GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BOM = b"\xef\xbb\xbf"


class _GzipReader(gzip.GzipFile):
    """A gzip reader that closes the file it reads, as the other readers do."""

    def __init__(self, source: io.BufferedReader) -> None:
        super().__init__(fileobj=source, mode="rb")
        self._source = source

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._source.close()


def decompressed(raw: BinaryIO) -> BinaryIO:
    """`raw` itself, or a reader of its decompressed bytes when it starts like a gzip
    or zstd stream: told by the first bytes, so a pipe or a misnamed file works too."""
    reader = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(cast(Any, raw))
    head = reader.peek(4)[:4]
    if head.startswith(GZIP_MAGIC):
        return cast(BinaryIO, _GzipReader(reader))
    if head.startswith(ZSTD_MAGIC):
        import zstandard

        stream = zstandard.ZstdDecompressor().stream_reader(reader, read_across_frames=True)
        return cast(BinaryIO, io.BufferedReader(cast(Any, stream)))
    return cast(BinaryIO, reader)


Codec = Literal["", "gz", "zst"]
# gzip's default level: a user who asked for .gz wants it small; one flush a 50 ms is
# at most a few hundred KB, compressed in a millisecond or two.
GZIP_LEVEL = 6


def codec_for(path: Path) -> Codec:
    """The compression an output's name asks for."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return "gz"
    if suffix in (".zst", ".zstd"):
        return "zst"
    return ""


def compress_block(codec: Codec, data: bytes) -> bytes:
    """`data` as one whole gzip member or zstd frame (or as it is)."""
    if codec == "gz":
        c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        return c.compress(data) + c.flush()
    if codec == "zst":
        import zstandard

        return bytes(zstandard.ZstdCompressor().compress(data))
    return data


def _decompressor(codec: Codec) -> Any:
    if codec == "gz":
        return zlib.decompressobj(31)
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj()


def _intact_end(f: BinaryIO, codec: Codec) -> int:
    """The end of the last whole member (gzip) or frame (zstd) of a file."""
    end = consumed = 0
    d = _decompressor(codec)
    while chunk := f.read(1 << 20):
        buf = chunk
        while buf:
            try:
                d.decompress(buf)
            except Exception:  # zlib.error, zstandard.ZstdError
                return end  # garbage after the last good member: a torn write
            if not d.eof:
                consumed += len(buf)
                break
            used = len(buf) - len(d.unused_data)
            consumed += used
            end = consumed
            buf = d.unused_data
            d = _decompressor(codec)
    return end


_CODEC_NAMES = {"": "plain text", "gz": "gzip", "zst": "zstd"}


def _content_codec(path: Path) -> Codec | None:
    """The compression a file's first bytes show (None: missing, or too short to tell:
    a write torn within its first bytes)."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        return None
    if len(head) < len(ZSTD_MAGIC):
        return None
    return "gz" if head.startswith(GZIP_MAGIC) else "zst" if head.startswith(ZSTD_MAGIC) else ""


def cut_torn(path: Path) -> int:
    """Cut what a crash tore off the end of an output: a last line without its newline,
    or a compressed output's last, unfinished member. Returns bytes dropped. A file whose
    name and content disagree (plain text named .gz) is refused, never cut: read as the
    name says, all of it would look torn."""
    codec = codec_for(path)
    found = _content_codec(path)
    if found is not None and found != codec:
        raise ConfigError(
            f"{path} holds {_CODEC_NAMES[found]}, but its name says {_CODEC_NAMES[codec]}: "
            "rename it, or choose another output"
        )
    if not codec:
        return drop_torn_tail(path)
    if not path.exists():
        return 0
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        end = _intact_end(f, codec)
        if end < size:
            f.truncate(end)
        return size - end


def torn_end(path: Path) -> int:
    """The bytes at the end of a compressed file (told by its content) that make no whole
    gzip member or zstd frame: a torn write, or damage. 0 for a plain file, and for a
    file too short to tell. `cut_torn` would cut them; this cuts nothing."""
    codec = _content_codec(path)
    if not codec:
        return 0
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        return size - _intact_end(f, codec)


# A file rewritten whole (compaction, merge) goes out in members of about this much text.
REWRITE_BLOCK = 1 << 20


def write_lines(dst: BinaryIO, lines: Iterable[bytes], codec: Codec) -> int:
    """Write whole lines to a new file, compressed in blocks as its codec says. Returns
    how many lines."""
    n = 0
    block = bytearray()
    for raw in lines:
        block += raw
        n += 1
        if len(block) >= REWRITE_BLOCK:
            dst.write(compress_block(codec, bytes(block)))
            block.clear()
    if block or not n:
        dst.write(compress_block(codec, bytes(block)))
    return n


@contextlib.contextmanager
def open_lines(path: Path) -> Iterator[BinaryIO]:
    """An output's bytes, decompressed when it is compressed."""
    with path.open("rb") as raw:
        stream = decompressed(raw)
        try:
            yield stream
        finally:
            stream.close()


def parse_line(number: int, raw: bytes) -> dict[str, Any]:
    """The JSON object on a line, or an InputError saying what is wrong with it."""
    if not raw.strip():
        raise InputError("blank line", line=number)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("not valid UTF-8", line=number) from None
        raise InputError(f"not JSON: {exc}", line=number) from None
    if not isinstance(value, dict):
        raise InputError(f"not a JSON object (got {type(value).__name__})", line=number)
    return value


def count_lines(path: Path) -> int:
    """Lines in a file (decompressed, when compressed), counted in big binary chunks
    (about 1 GB/s)."""
    n = 0
    last = b"\n"
    with open_lines(path) as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (0 if last == b"\n" else 1)


def drop_torn_tail(path: Path) -> int:
    """Cut a last line that a crash left without its newline. Returns bytes dropped."""
    if not path.exists():
        return 0
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        pos = size
        block = 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                f.truncate(keep)
                return size - keep
            pos = start
        f.truncate(0)
        return size


def write_failure(path: object, error: OSError) -> str:
    """Why a run stopped when its output could not be written: a full disk (make room,
    the rerun resumes), or standard output closed by its reader (`| head`: no resume
    there; the lines written are whole)."""
    why = error.strerror or error
    if isinstance(error, BrokenPipeError) or str(path) == "-":
        return f"standard output was closed by its reader ({why}); the lines written are whole"
    return f"cannot write {path}: {why}; make room and rerun to resume"


class JsonlWriter:
    """Appends one JSON line per record, always whole: lines collect in memory and go
    to the file in one write per `flush_interval` (or sooner when many), so a killed
    process leaves at most a torn last line, which resume drops."""

    def __init__(
        self,
        path: Path,
        *,
        flush_interval: float = FLUSH_INTERVAL,
        fsync_interval: float = FSYNC_INTERVAL,
        stream: BinaryIO | None = None,
    ) -> None:
        self.path = path
        # A stream given (standard output) is written as it is: no codec, no fsync.
        self.codec: Codec = "" if stream is not None else codec_for(path)
        self._f: BinaryIO = stream if stream is not None else path.open("ab", buffering=0)
        self._syncs = stream is None
        self._buf = bytearray()
        self._flush_interval = flush_interval
        self._fsync_interval = fsync_interval
        self._last_sync = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self.lines = 0
        # The first failed write (disk full, quota, I/O error). Nothing is written after
        # it: the owner stops the run, and a rerun redoes every line not in the file.
        self.error: OSError | None = None

    def write(self, record: dict[str, Any]) -> None:
        if self.error is not None:
            return
        self._buf += orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        self.lines += 1
        if len(self._buf) >= FLUSH_BYTES or self._flush_interval <= 0:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self._flush_interval, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.error is not None:
            self._buf.clear()
            return
        # Raising here would go to the event loop's handler (this runs from a timer) and
        # leave the buffer exported: the error is kept for the owner to act on instead.
        try:
            if self._buf and self.codec:
                self._buf[:] = compress_block(self.codec, bytes(self._buf))
            if self._buf:
                view = memoryview(self._buf)
                try:
                    while view:
                        written = self._f.write(view)
                        view = view[written or 0 :]
                finally:
                    view.release()
            now = time.monotonic()
            if self._syncs and now - self._last_sync >= self._fsync_interval:
                os.fsync(self._f.fileno())
                self._last_sync = now
        except OSError as exc:
            self.error = exc  # a line cut short is a torn tail: resume drops it
        self._buf.clear()

    def sync(self) -> None:
        """Flush and fsync now."""
        self.flush()
        if self.error is None and self._syncs:
            try:
                os.fsync(self._f.fileno())
                self._last_sync = time.monotonic()
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        if self._f.closed:
            return
        self.flush()
        if not self._syncs:
            return  # standard output: not ours to close
        if self.error is None:
            try:
                os.fsync(self._f.fileno())
            except OSError as exc:
                self.error = exc
        self._f.close()
