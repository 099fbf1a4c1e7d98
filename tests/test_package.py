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
    code = "import sys, bridge, bridge.cli; print(sorted(m for m in ('jax', 'torch', 'flax') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    help_run = subprocess.run([sys.executable, "-m", "bridge", "--help"], capture_output=True, text=True, check=True)
    assert "check" in help_run.stdout
    assert "convert" in help_run.stdout


# What each stage of the pipeline may import (DESIGN.md: capture -> match -> compare -> report, rules beside):
# the floor (errors, tensors, numerics, the Flax model helpers, arguments) and the rules (with torch_layers) serve
# everyone; nothing imports the command line, and no arrow goes against the flow (to_torch(check=True) lives in
# check/, above the converter it runs).
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


def test_each_stage_imports_only_the_stages_before_it() -> None:
    root = Path(bridge.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if parts in {("__init__.py",), ("__main__.py",), ("testing.py",), ("torch_layers.py",)}:
            continue  # the public API's lazy table and public names, ``python -m bridge``, the pytest plugin
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
    assert found == []


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

    def missing_residual(context: object) -> None:  # the name of a registered hint
        return None

    with pytest.raises(bridge.RuleRegistrationError, match="missing_residual is registered already"):
        hint(missing_residual)
    assert hints == _HINTS


def test_each_kinds_hints_live_with_its_rule() -> None:
    """A layer kind's known mistakes are its rule's (one file per kind); the checker keeps only those that fit
    any kind."""
    from bridge.check._hints import _HINTS

    owned = {rule.kind: [h.__name__ for h in rule.hints] for rule in bridge.rules.registered_rules() if rule.hints}
    assert owned["Dense"] == ["dense_layout", "unpermuted_after_flatten"]
    assert owned["BatchNorm"] == ["batchnorm_statistics_missing", "norm_epsilon"]
    assert {owned[k][0] for k in ("LayerNorm", "RMSNorm", "GroupNorm")} == {"norm_epsilon"}
    assert owned["Conv"] == ["symmetric_padding"]
    assert owned["MultiHeadDotProductAttention"] == ["attention_mistakes"]
    assert owned["softmax"] == ["softmax_axis"]
    for rule in bridge.rules.registered_rules():
        for function in rule.hints:
            assert function.__module__.startswith("bridge.rules."), function
    assert [h.__name__ for h in _HINTS] == [
        "training_mode",
        "parameters_differ",
        "wrong_activation",
        "missing_residual",
    ]


def _imports(root: Path) -> list[tuple[str, str, str]]:
    """Every import of a bridge module by a bridge module, at any depth (functions too, not under
    ``if TYPE_CHECKING``): (importer, imported module, name imported from it)."""
    modules = {
        ".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__") for p in root.rglob("*.py")
    }
    found = []
    for path in sorted(root.rglob("*.py")):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        package = name.removesuffix(".__init__") if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or id(node) in typing_only:
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "bridge":
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.append(
                    (name.removesuffix(".__init__"), submodule if submodule in modules else target, alias.name)
                )
    return found


def test_no_module_imports_another_packages_private_module() -> None:
    """Packages meet at their faces (``bridge/check/__init__.py``); private modules are the package's own."""
    root = Path(bridge.__file__).parent
    crossing = []
    for importer, imported, _ in _imports(root):
        parts = imported.split(".")
        home = importer.split(".")[1] if importer.count(".") >= 1 and not importer.split(".")[1].startswith("_") else ""
        if len(parts) >= 3 and parts[2].startswith("_") and parts[1] != home:
            crossing.append(f"{importer} -> {imported}")
    assert crossing == []


def test_the_import_graph_has_no_circle() -> None:
    """Module to module, counting imports inside functions and a package face's imports of its modules."""
    root = Path(bridge.__file__).parent
    graph: dict[str, set[str]] = {}
    for importer, imported, _ in _imports(root):
        if imported != importer:
            graph.setdefault(importer, set()).add(imported)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for nxt in sorted(graph.get(module, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        path.pop()
        state[module] = 2
        return None

    circles = [c for m in sorted(graph) if m not in state and (c := visit(m))]
    assert circles == []
