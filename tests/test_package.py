"""The package itself: the lazy public API resolves, matches its static re-exports, and imports nothing heavy early."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import bridge


def test_every_public_name_resolves() -> None:
    for name in bridge.__all__:
        assert getattr(bridge, name) is not None, name


def test_the_lazy_table_and_the_static_re_exports_agree() -> None:
    tree = ast.parse(Path(bridge.__file__).read_text())
    static = {
        alias.asname
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        for statement in node.body
        if isinstance(statement, ast.ImportFrom)
        for alias in statement.names
    }
    assert static == set(bridge.__all__)


def test_import_and_help_do_not_load_jax_or_torch() -> None:
    code = "import sys, bridge, bridge._cli; print(sorted(m for m in ('jax', 'torch', 'flax') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    help_run = subprocess.run([sys.executable, "-m", "bridge", "--help"], capture_output=True, text=True, check=True)
    assert "check" in help_run.stdout
    assert "convert" in help_run.stdout
