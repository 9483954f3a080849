"""The package's layers are checked by import-linter (`make lint`): these tests prove the
check would catch a lower layer importing a higher one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, ROOT

LINT = Path(PYTHON).with_name("lint-imports")
pytestmark = pytest.mark.skipif(
    not LINT.exists(), reason="import-linter is not installed (pip install -e '.[dev]')"
)


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT), "--config", str(tree / ".importlinter"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "llmbatch", tree / "llmbatch", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tree / ".importlinter")
    return tree


def test_the_package_keeps_its_layers(tmp_path):
    """The tree as it is passes the layers contract."""
    result = _lint(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_lower_layer_importing_a_higher_one_fails_the_lint(tmp_path):
    """The output contract importing the CLI's settings is a broken contract, named."""
    tree = _copy(tmp_path)
    module = tree / "llmbatch" / "output" / "records.py"
    module.write_text(module.read_text() + "\nfrom llmbatch.app.settings import Settings  # noqa\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "llmbatch.output is not allowed to import llmbatch.app" in result.stdout


def test_siblings_of_one_layer_may_not_import_each_other(tmp_path):
    """The cost layer importing the scheduler (its sibling) is refused too."""
    tree = _copy(tmp_path)
    module = tree / "llmbatch" / "cost" / "spend.py"
    module.write_text(module.read_text() + "\nfrom llmbatch.schedule.tokens import TokenEstimator  # noqa\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "llmbatch.cost is not allowed to import llmbatch.schedule" in result.stdout
