"""Reruns: what the output already holds, and what each id needs now (the compaction
that leaves one line per id afterwards is `llmbatch.output.rewrite`).

A rerun reads the output once into an `OutputIndex` (per custom_id: the fingerprint,
state, fault and server of its newest line, in a few arrays: ~25 bytes an id), then
makes a `Plan` in a pre-pass over the whole input, before anything is sent. Per id, in
this order (DESIGN.md, "skip done"):

1. an answer to a different request (*stale*: the prompt, model or params changed)
   stops the run before anything is sent, unless ``--redo stale`` (ask again) or
   ``--keep-stale`` (keep it);
2. valid: skipped; failed for a transient cause: redone; failed by the request's
   fault (400/404/422): redone with ``--redo failed``, or when the server it was sent
   to has changed; invalid after ``--max-requests``: kept unless ``--redo invalid``;
3. ``--revalidate``: today's validators run over the valid answers kept, with no
   request; those that now fail are asked again.

Lines written by an older llmbatch carry no fingerprint: they are kept as they are
(only an explicit ``--redo`` applies to them), and reported once.
"""

from __future__ import annotations

import tempfile
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson

from llmbatch.core.endpoints import endpoint_of
from llmbatch.core.errors import ConfigError, InputError
from llmbatch.core.stats import Stats
from llmbatch.core.values import Completion, Request, State
from llmbatch.files.bitmap import Bitmap
from llmbatch.files.idset import IdSet
from llmbatch.files.jsonl import codec_for, count_lines, cut_torn, open_lines
from llmbatch.input.source import Source
from llmbatch.output.readback import Line, completion_of, line_of
from llmbatch.output.records import Format

__all__ = ["REDO_CHOICES", "OutputIndex", "Plan", "Rules", "make_plan", "parse_redo"]

REDO_CHOICES = ("failed", "invalid", "stale", "all", "none")

# An index entry's flags, one byte an id.
_STATE = {State.VALID: 1, State.INVALID: 2, State.FAILED: 3}
_STATES = {v: k for k, v in _STATE.items()}
_REQUEST_FAULT = 4
_HAS_FP = 8


def parse_redo(text: str | None) -> frozenset[str]:
    """``--redo failed,invalid`` -> what to redo. Transient failures are redone unless
    ``none``; ``all`` is failed, invalid and stale."""
    if text is None:
        return frozenset({"transient"})
    words = {w.strip() for w in text.split(",") if w.strip()}
    unknown = words - set(REDO_CHOICES)
    if unknown or not words:
        raise ConfigError(f"--redo takes a comma list of {', '.join(REDO_CHOICES)}, not {text!r}")
    if "none" in words:
        if len(words) > 1:
            raise ConfigError("--redo none keeps every written line: it cannot go with anything else")
        return frozenset()
    if "all" in words:
        words = {"failed", "invalid", "stale"}
    return frozenset(words | {"transient"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Rules:
    redo: frozenset[str] = frozenset({"transient"})
    keep_stale: bool = False
    revalidate: bool = False
    max_items: int | None = None  # only the first N items that need work

    @property
    def stale_kept(self) -> bool:
        """`--keep-stale`, or `--redo none` (which keeps every written line)."""
        return self.keep_stale or not self.redo


class OutputIndex:
    """Per custom_id, what the newest line of an output says: fingerprint, state,
    fault and server (and, for ``--revalidate``, where the line is)."""

    def __init__(self, expected: int, *, offsets: bool = False) -> None:
        self.ids = IdSet(expected)
        size = self.ids.capacity
        self.fp = array("q", bytes(8 * size))
        self.flags = array("B", bytes(size))
        self.server = array("B", bytes(size))
        self.offset = array("q", bytes(8 * size)) if offsets else None
        self.servers: list[str] = [""]  # server hashes; slot 0 is "unknown"
        self._servers: dict[str, int] = {}
        self.lines = 0
        self.repeated = 0  # lines for an id that has a newer one: compaction removes them
        self.no_fp = 0  # ids whose newest line an older llmbatch wrote
        self.formats: Counter[Format] = Counter()

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def scan(cls, path: Path, *, offsets: bool = False) -> OutputIndex:
        """Read an output (a torn last line is cut first: the crash that tore it lost it)."""
        if not path.exists() or path.stat().st_size == 0:
            return cls(0)
        cut_torn(path)
        index = cls(count_lines(path), offsets=offsets)
        add = index.add
        with open_lines(path) as f:
            pos = 0
            for raw in f:
                at, pos = pos, pos + len(raw)
                line = line_of(raw)
                if line is not None:
                    add(line, at)
        return index

    def add(self, line: Line, offset: int = 0) -> None:
        self.lines += 1
        self.formats[line.format] += 1
        slot = self.ids.locate(line.custom_id, add=True)
        old = self.flags[slot]
        if old:
            self.repeated += 1
            self.no_fp -= not old & _HAS_FP
        flags = _STATE[line.state]
        if line.fault == "request":
            flags |= _REQUEST_FAULT
        if line.fp is not None:
            flags |= _HAS_FP
            self.fp[slot] = line.fp
        else:
            self.no_fp += 1
        self.flags[slot] = flags
        server = line.server
        if server:
            self.server[slot] = self._servers.get(server) or self._server_index(server)
        if self.offset is not None:
            self.offset[slot] = offset

    def _server_index(self, server: str) -> int:
        if len(self.servers) >= 255:
            return 0
        self.servers.append(server)
        self._servers[server] = len(self.servers) - 1
        return len(self.servers) - 1


@dataclass(slots=True)
class Plan:
    """What a rerun does with each input line, decided before anything is sent."""

    todo: Bitmap = field(default_factory=Bitmap)  # lines to send
    bad: Bitmap = field(default_factory=Bitmap)  # lines that are rejects
    dupes: dict[int, str] = field(default_factory=dict)  # duplicate lines: their reject reason
    renamed: dict[int, str] = field(default_factory=dict)  # --number-duplicates: line -> id
    items: int = 0  # input items (rejects not counted)
    rejects: int = 0
    work: int = 0  # items to send
    skipped: int = 0  # valid, kept
    kept: Counter[str] = field(default_factory=Counter)  # not valid (by state), and stale kept
    kept_bad: int = 0  # kept lines that are not valid: in scope, they make the exit code 1
    redo: Counter[str] = field(default_factory=Counter)  # why items are sent again
    stale: int = 0  # stale answers with no rule for them yet
    out_of_scope: int = 0  # needing work, beyond --max-items
    last_line: int = 0  # the last line sent: with --max-items, the scope ends there


Validator = Callable[[Request, Completion], "str | None"]


def make_plan(
    source: Source,
    index: OutputIndex,
    rules: Rules,
    *,
    server: str,
    validator: Validator | None = None,
    output: Path | None = None,
    stats: Stats | None = None,
) -> Plan:
    """The pre-pass: every input line built and judged against the output's index
    (blank lines are counted into `stats`)."""
    plan = Plan()
    current_server = index.servers.index(server) if server in index.servers else -1
    revalidate = None
    if rules.revalidate and output is not None and validator is not None:
        revalidate = _Revalidator(output, validator, index)
    try:
        for item in source.requests(expected=index.lines, stats=stats):
            if isinstance(item, InputError):
                plan.rejects += 1
                if item.kind == "duplicate":
                    plan.dupes[item.line] = str(item)
                else:
                    plan.bad.add(item.line)
                continue
            if item.line in source.renamed:
                plan.renamed[item.line] = item.custom_id
            plan.items += 1
            action, why, stale = _judge(item, index, rules, current_server, revalidate)
            if stale and action != "send":
                plan.kept["stale"] += action != "refuse"
            if action == "skip":
                plan.skipped += 1
            elif action == "keep":
                plan.kept[why] += 1
                plan.kept_bad += 1
            elif action == "refuse":
                plan.stale += 1
            elif rules.max_items is not None and plan.work >= rules.max_items:
                plan.out_of_scope += 1
            else:
                plan.work += 1
                plan.last_line = item.line
                plan.todo.add(item.line)
                if why != "new":
                    plan.redo[why] += 1
    finally:
        if revalidate is not None:
            revalidate.close()
    return plan


def _judge(
    req: Request, index: OutputIndex, rules: Rules, server: int, revalidate: _Revalidator | None
) -> tuple[str, str, bool]:
    """(action, why, stale): the action is "send" (why: "new" or the reason to redo),
    "skip" (a valid answer), "keep" (a line that is not valid; why: its state), or
    "refuse" (a stale answer that no rule covers yet)."""
    slot = index.ids.locate(req.custom_id)
    if slot < 0:
        return "send", "new", False
    flags = index.flags[slot]
    state = _STATES[flags & 3]
    redo = rules.redo
    # An older fingerprint of the same body (`Request.fp_before`) is the same request too.
    stale = bool(flags & _HAS_FP) and index.fp[slot] != req.fp and index.fp[slot] != (req.fp_before or req.fp)
    if stale:
        if "stale" in redo:
            return "send", "stale", True
        if not rules.stale_kept:
            return "refuse", "stale", True
    if state is State.VALID:
        if revalidate is not None and revalidate.fails(req, slot):
            return "send", "revalidate", stale
        return "skip", "valid", stale
    if stale:
        return "keep", state.value, True
    old = not flags & _HAS_FP
    if state is State.INVALID:
        return ("send", "invalid", False) if "invalid" in redo else ("keep", "invalid", False)
    if "failed" in redo:
        return "send", "failed", False
    if old or "transient" not in redo:  # an older line, or --redo none: kept as it is
        return "keep", "failed", False
    if not flags & _REQUEST_FAULT:
        return "send", "transient", False
    if index.server[slot] != server:
        return "send", "server", False
    return "keep", "failed", False


class _Revalidator:
    """Today's validators over a kept answer, read from its line in the output."""

    def __init__(self, output: Path, validator: Validator, index: OutputIndex) -> None:
        if index.offset is None:
            raise ValueError("revalidation needs an index with offsets")
        self.validator = validator
        self.offset = index.offset
        self._f = _seekable(output)

    def fails(self, req: Request, slot: int) -> bool:
        self._f.seek(self.offset[slot])
        try:
            rec = orjson.loads(self._f.readline())
        except orjson.JSONDecodeError:
            return True
        completion = completion_of(rec, endpoint_of(req.url))
        if completion is None:
            return True
        return self.validator(req, completion) is not None

    def close(self) -> None:
        self._f.close()


def _seekable(output: Path) -> IO[bytes]:
    """The output, open for reading at line offsets: a compressed one is copied out
    decompressed first (its offsets are those of the decompressed text)."""
    if not codec_for(output):
        return output.open("rb")
    copy = tempfile.TemporaryFile(prefix="llmbatch-revalidate-")  # noqa: SIM115 (the caller closes it)
    with open_lines(output) as src:
        while chunk := src.read(1 << 20):
            copy.write(chunk)
    copy.seek(0)
    return copy
