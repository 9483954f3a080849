"""What a run checks before anything is sent: the output (writable, not the input, not
someone else's file), the API key, what `-o -` refuses, `--fresh`, and the Batch API
mode's open batches that bind an output; and the files `merge` and `export` read and write."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Sequence
from pathlib import Path

from llmbatch.app.settings import Settings, read_api_key
from llmbatch.core.errors import ConfigError
from llmbatch.files import sidecars
from llmbatch.files.jsonl import open_lines
from llmbatch.input.source import Source
from llmbatch.modes.batch.state import BatchState
from llmbatch.output.readback import is_ours

__all__ = [
    "BATCH_WAYS",
    "DEFAULT_BASE_URL",
    "check_api_key",
    "check_files",
    "check_output",
    "check_stdout",
    "open_batches_check",
    "start_fresh",
    "to_stdout",
]

# Where the openai SDK sends requests when neither --base-url nor OPENAI_BASE_URL says.
DEFAULT_BASE_URL = "https://api.openai.com/v1"
BATCH_WAYS = "rerun with --batch-api to collect them, or --batch-api --cancel to cancel them"


def check_output(settings: Settings, source: Source) -> None:
    """Fail before any request for the output problems a user can fix at once."""
    out = settings.output
    if out.is_dir():
        raise ConfigError(f"output is a directory, not a file: {out}")
    if source.same_file(out) or (source.path is not None and source.path.resolve() == out.resolve()):
        raise ConfigError("input and output are the same file: choose another --output")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"output folder does not exist: {folder}")
    for path in (out, settings.rejects_path):
        existed = path.exists()
        try:
            with path.open("ab"):
                pass
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
        if not existed:
            path.unlink()  # a run that stops at a later check must leave no empty files


def check_files(inputs: Sequence[Path], output: Path, *, none: str) -> None:
    """`inputs` are files (at least one, else `none` is the error) and `output` may be
    written: not a directory, in a folder that exists."""
    if not inputs:
        raise ConfigError(none)
    for path in inputs:
        if not path.is_file():
            raise ConfigError(f"not a file: {path}" if path.exists() else f"file not found: {path}")
    if output.is_dir():
        raise ConfigError(f"output is a directory, not a file: {output}")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"output folder does not exist: {folder}")


def check_api_key(settings: Settings) -> str | None:
    """The API key (None for the offline model), or a ConfigError saying how to give one."""
    if settings.provider == "fake":
        return None
    env = "ANTHROPIC_API_KEY" if settings.provider == "anthropic" else "OPENAI_API_KEY"
    key = read_api_key(settings.api_key_file, env)
    if key is None:
        raise ConfigError(
            f"no API key: set {env} or pass --api-key-file "
            "(any value for a local server that needs none; --provider fake runs offline)"
        )
    return key


def to_stdout(settings: Settings) -> bool:
    return str(settings.output) == "-"


def check_stdout(settings: Settings) -> None:
    """`-o -`: results to standard output, and so no resume: every such run is fresh,
    and what only makes sense on a file the run can read back is refused."""
    for name in ("fresh", "redo", "keep_stale", "revalidate", "batch_api"):
        if getattr(settings, name):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} needs an output file to read back; with -o - every run starts afresh")


def start_fresh(output: Path, *, force: bool) -> None:
    """Empty the output for --fresh: only a file llmbatch wrote, unless --force."""
    if not force and output.exists() and output.stat().st_size:
        try:
            with open_lines(output) as f:
                first = f.readline()
        except (OSError, EOFError, ValueError):  # not even the compression it claims
            first = b""
        if not is_ours(first):
            raise ConfigError(
                f"{output} does not look like an llmbatch output: --fresh would empty it "
                "(add --force if that is what you want)"
            )
    output.write_bytes(b"")
    with contextlib.suppress(FileNotFoundError):
        sidecars.compacting(output).unlink()


def open_batches_check(settings: Settings) -> BatchState | None:
    """The Batch API mode's record of this output, if it has one. Open batches bind the
    output: only a --batch-api run (which collects them first) may go on."""
    for name in ("no_wait", "cancel"):
        if getattr(settings, name) and not settings.batch_api:
            raise ConfigError(f"--{name.replace('_', '-')} goes with --batch-api")
    if settings.then == "live" and not settings.batch_api:
        raise ConfigError("--then live goes with --batch-api")
    if settings.batch_api and settings.provider == "fake":
        raise ConfigError(
            "--batch-api needs a server with a Batch API (OpenAI's, or Anthropic's Message Batches); "
            "the offline fake model has none (python -m llmbatch.testing.server has one, for trying it out)"
        )
    existing = BatchState.existing(settings.output)
    open_ = existing.open_batches() if existing is not None else []
    if open_ and (not settings.batch_api or settings.fresh):
        existing_n = f"{len(open_)} batch{'es' if len(open_) != 1 else ''}"
        if existing is not None:
            existing.close()
        how = "--fresh would lose them" if settings.fresh else "a live run would pay for them twice"
        raise ConfigError(
            f"{settings.output} has {existing_n} still open at the provider ({how}): {BATCH_WAYS}"
        )
    if settings.fresh and existing is not None:  # starting over: the record of what was done too
        existing.close()
        existing = None
        for path in sidecars.sqlite_files(sidecars.batches(settings.output)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        shutil.rmtree(sidecars.batch_spool(settings.output), ignore_errors=True)
    if settings.batch_api:
        return existing or BatchState(sidecars.batches(settings.output))
    if existing is not None:
        existing.close()
    return None
