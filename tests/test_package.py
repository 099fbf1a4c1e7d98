"""The package itself: the lazy public API resolves, matches its static re-exports, and imports nothing heavy early."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

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
    code = "import sys, bridge, bridge.cli._cli; print(sorted(m for m in ('jax', 'torch', 'flax') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    help_run = subprocess.run([sys.executable, "-m", "bridge", "--help"], capture_output=True, text=True, check=True)
    assert "check" in help_run.stdout
    assert "convert" in help_run.stdout


# What each stage of the pipeline may import (DESIGN.md: capture -> match -> compare -> report, rules beside):
# the floor (errors, tensors, numerics, the Flax model helpers, arguments, torch_layers) and the rules serve
# everyone; nothing imports the command line. The one arrow against the flow: to_torch(check=True) runs the
# checker on what it built (convert/_native.py imports check/ inside that function).
ALLOWED = {
    "rules": {"floor"},
    "capture": {"floor", "rules"},
    "match": {"floor", "rules", "capture"},
    "convert": {"floor", "rules", "capture", "match"},
    "check": {"floor", "rules", "capture", "match", "convert"},
    "io": {"floor", "rules", "convert"},
    "hf": {"floor", "rules", "convert", "check", "io"},
    "cli": {"floor", "rules", "capture", "match", "convert", "check", "io", "hf"},
    "floor": {"floor"},
}
EXCEPTIONS = {("convert/_native.py", "check")}


def test_each_stage_imports_only_the_stages_before_it() -> None:
    root = Path(bridge.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if parts in {("__init__.py",), ("__main__.py",), ("testing.py",)}:
            continue  # the public API's lazy table, ``python -m bridge`` and the pytest plugin reach everything
        stage = parts[0] if len(parts) > 1 else "floor"
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = list(parts[:-1])[: len(parts) - node.level]
            target = [*base, *(node.module or "").split(".")]
            target = [p for p in target if p]
            imported = target[0] if target and target[0] in ALLOWED else "floor"
            if imported != stage and imported not in ALLOWED[stage]:
                found.append(("/".join(parts), imported))
    assert set(found) == EXCEPTIONS, sorted(set(found) - EXCEPTIONS)


def test_every_package_folder_is_listed_for_installation() -> None:
    import tomllib

    root = Path(bridge.__file__).parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "bridge").rglob("__init__.py")}
    assert found - listed == set()


def test_the_primitive_and_hint_registries_refuse_a_second_registration() -> None:
    from bridge.check._hints import _HINTS, hint
    from bridge.convert._primitives import TABLE, translates

    table, hints = dict(TABLE), list(_HINTS)
    with pytest.raises(bridge.RuleRegistrationError, match="'add' has a translation already"):
        translates("add")(lambda emit, eqn, args: args[0])
    assert table == TABLE

    def dense_layout(context: object) -> None:  # the name of a registered hint
        return None

    with pytest.raises(bridge.RuleRegistrationError, match="dense_layout is registered already"):
        hint("Dense")(dense_layout)
    assert hints == _HINTS
