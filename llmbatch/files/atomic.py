"""Replacing a file whole: the new content goes to a temporary file beside it, is synced,
and is renamed over the old one. Readers see the old file or the new one, never half of
either; a crash before the rename leaves the old file and a stray temporary, which the next
rewrite replaces; a failure (an exception, Ctrl-C) removes the temporary.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["replace", "sync_dir"]


@contextlib.contextmanager
def replace(path: Path, *, temp: Path) -> Iterator[BinaryIO]:
    """A new file to write, which becomes `path` when the block ends without an error."""
    try:
        with temp.open("wb") as dst:
            yield dst
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    sync_dir(path.parent)


def sync_dir(folder: Path) -> None:
    """fsync a folder: a rename in it is then on disk too."""
    with contextlib.suppress(OSError):
        fd = os.open(folder if str(folder) else ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
