"""The package's public face: `llmbatch.__all__` lists every name imported there."""

from __future__ import annotations

import ast
from pathlib import Path

import llmbatch
import llmbatch.testing


def _imported_names(module: object) -> set[str]:
    path = Path(str(getattr(module, "__file__", "")))
    tree = ast.parse(path.read_text())
    return {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module != "__future__"
        for alias in node.names
        if not (alias.asname or alias.name).startswith("_")
    }


def test_all_lists_every_public_import_sorted_and_importable() -> None:
    """`from llmbatch import X` works for every X in __all__, nothing imported is left
    out, and the list is kept sorted."""
    for module in (llmbatch, llmbatch.testing):
        names = list(module.__all__)
        assert names == sorted(names)
        assert _imported_names(module) == set(names) - {"__version__"}
        for name in names:
            assert getattr(module, name) is not None
