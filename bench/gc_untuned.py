"""`python bench/gc_untuned.py run ...`: llmbatch with Python's default garbage-collector
settings (no freeze, default thresholds), to measure what `llmbatch.app.run.tune_gc` saves."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import llmbatch.app.run
from llmbatch.app.cli import main


def _untuned() -> None:
    """Leave the collector as Python sets it up."""


llmbatch.app.run.tune_gc = _untuned
main()
