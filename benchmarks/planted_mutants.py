"""Mutation testing with a planted set: each mutant breaks one promise of bridge/ in a copy of the project;
the suite must fail on it (the mutant is "killed"). Prints each verdict and the kill rate.

Run: ``python benchmarks/planted_mutants.py`` (or ``nox -s mutants``; minutes). A mutant names the
tests that should kill it, so the run stays short; a survivor is a promise no test holds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


class Mutant(NamedTuple):
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = (
    Mutant(
        "torch gradients replaced by Flax's own",
        "bridge/check/_gradients.py",
        "got = np.empty((0,)) if candidate is None else candidate",
        "got = ref.copy()",
        ("tests/test_ports_the_torch_way.py", "tests/test_check.py"),
    ),
    Mutant(
        "missing parameters compared against zeros",
        "bridge/check/_gradients.py",
        "got = np.empty((0,)) if candidate is None else",
        "got = np.zeros_like(ref) if candidate is None else",
        ("tests/test_ports_the_torch_way.py",),
    ),
    Mutant(
        "accumulation bound 16x too tight",
        "bridge/_numerics.py",
        "C_DOT = 8.0",
        "C_DOT = 0.5",
        ("tests/test_computed_differently.py",),
    ),
    Mutant(
        "accumulation bound 1000x too loose",
        "bridge/_numerics.py",
        "C_DOT = 8.0",
        "C_DOT = 8000.0",
        ("tests/test_computed_differently.py",),
    ),
    Mutant(
        "the bias is not a term of the sum",
        "bridge/_numerics.py",
        "    b = 0.0 if bias is None else np.abs(bias)",
        "    b = 0.0",
        ("tests/test_computed_differently.py",),
    ),
    Mutant(
        "no ulps for the final roundings",
        "bridge/_numerics.py",
        "C_OUTPUT_ULPS = 3.0",
        "C_OUTPUT_ULPS = 0.0",
        ("tests/test_computed_differently.py",),
    ),
    Mutant(
        "Dense kernel not transposed",
        "bridge/rules/dense.py",
        '_KERNEL = ParamMap("params", "kernel", "weight", (1, 0))',
        '_KERNEL = ParamMap("params", "kernel", "weight", None)',
        ("tests/test_convert.py",),
    ),
    Mutant(
        "activation hints without the fix",
        "bridge/check/_hints.py",
        'f"use {fix}" if fix else "use the torch activation that computes it"',
        '"use the matching torch activation"',
        ("tests/test_layers.py",),
    ),
    Mutant(
        "parameters under their own names not found",
        "bridge/match/_match.py",
        "        if len(candidates) == 1:",
        "        if False:",
        ("tests/test_ports_the_torch_way.py",),
    ),
    Mutant(
        "channels-first flatten not permuted by load_into",
        "bridge/convert/_convert.py",
        "    return {flatten + 1: channels_first_flatten_permutation(channels, positions)}",
        "    return {}",
        ("tests/test_channels_first.py",),
    ),
    Mutant(
        "to_torch weights left as transposed views",
        "bridge/convert/_convert.py",
        "        return view.clone(memory_format=torch.contiguous_format)",
        "        return view",
        ("tests/test_zero_copy.py",),
    ),
    Mutant(
        "non-finite mismatches masked",
        "bridge/check/_compare.py",
        "    nonfinite_bad = ~both_finite & ~same_nonfinite",
        "    nonfinite_bad = np.zeros_like(both_finite)",
        ("tests/test_check.py",),
    ),
    Mutant(
        "a scalar first is swapped for subtraction too (2 - x becomes x - 2)",
        "bridge/convert/_primitives.py",
        '_COMMUTATIVE = frozenset({"add", "add_any", "mul", "eq", "ne"})',
        '_COMMUTATIVE = frozenset({"add", "add_any", "mul", "eq", "ne", "sub"})',
        ("tests/test_primitives.py",),
    ),
    Mutant(
        "dot_general puts the right operand's free axes first",
        "bridge/convert/_primitives.py",
        "out += [rhs_letters[b] for b in range(rr) if b not in rb and b not in rc]",
        "out = [rhs_letters[b] for b in range(rr) if b not in rb and b not in rc] + out",
        ("tests/test_primitives.py",),
    ),
    Mutant(
        "pooling windows padded with zeros for max",
        "bridge/convert/_primitives.py",
        "x = emit.call(torch.nn.functional.pad, x, pads, value=init)",
        "x = emit.call(torch.nn.functional.pad, x, pads, value=0.0)",
        ("tests/test_primitives.py",),
    ),
    Mutant(
        "a mixed-precision layer keeps its float32 weights",
        "bridge/convert/_fx_build.py",
        "module.to(torch_dtype(out_aval.dtype))",
        "pass",
        ("tests/test_native.py",),
    ),
    Mutant(
        "check=True does not raise",
        "bridge/check/_verify.py",
        "    if not report.ok:",
        "    if False:",
        ("tests/test_native.py",),
    ),
    Mutant(
        "rows near a kink never left out of the gradients",
        "bridge/check/_gradients.py",
        "        if smooth.any() and dropped_at_kinks:",
        "        if False:",
        ("tests/test_kinks.py",),
    ),
    Mutant(
        "a chain position's extra port parameter not reported as unchecked",
        "bridge/check/_settings.py",
        "        inside += [",
        "        inside += [] and [",
        ("tests/test_foreign_ports.py",),
    ),
    Mutant(
        "load_into ignores a flatten's permutation when it copies",
        "bridge/convert/_load.py",
        "    if permutation is None:",
        "    if True:",
        ("tests/test_channels_first.py",),
    ),
    Mutant(
        "the tolerance method chosen by the pairing (a chain's port), not per call",
        "bridge/check/_check_pair.py",
        "    if opening is None:\n",
        "    if opening is None or not isinstance(captured.port, torch.nn.Sequential):\n",
        ("tests/test_chain_as_tree.py",),
    ),
    Mutant(
        "a position holding variables without a rule bounded as a parameter-free function",
        "bridge/check/_check_pair.py",
        "        if (rule is None and _holds_variables(call.module)) or not is_array",
        "        if False or not is_array",
        ("tests/test_chain_as_tree.py",),
    ),
    Mutant(
        "a plot written over whatever file is at its path",
        "bridge/check/_plot.py",
        "    write_report_file(path, png.getvalue())",
        "    Path(path).write_bytes(png.getvalue())",
        ("tests/test_cli.py",),
    ),
    Mutant(
        "a chain's --mapping dropped (only a tree's reaches load_into and the check)",
        "bridge/cli/_pair.py",
        "    mapping = _mapping(args.mapping)",
        "    mapping = _mapping(args.mapping) if args.input_shape else None",
        ("tests/test_hostile.py",),
    ),
    Mutant(
        "the port's keyword arguments passed under the Flax names",
        "bridge/capture/_arguments.py",
        "port_keywords(port, torch_kwargs), channels_last",
        "torch_kwargs, channels_last",
        ("tests/test_hostile.py",),
    ),
)


def killed(mutant: Mutant, workspace: Path) -> bool:
    """Apply one mutant to a fresh copy of the project and run its tests: killed when they fail."""
    copy = workspace / "project"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(
        ROOT, copy, ignore=shutil.ignore_patterns(".git", ".nox", "__pycache__", "*.egg-info", ".hypothesis")
    )
    target = copy / mutant.path
    text = target.read_text()
    if text.count(mutant.old) != 1:
        raise SystemExit(f"mutant {mutant.name!r}: its line is not (once) in {mutant.path}; update the mutant")
    target.write_text(text.replace(mutant.old, mutant.new))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider", *mutant.tests],
        cwd=copy,
        env={**os.environ, "PYTHONPATH": str(copy)},
        capture_output=True,
        text=True,
    )
    return result.returncode != 0


def main() -> None:
    kills = 0
    with tempfile.TemporaryDirectory() as folder:
        for mutant in MUTANTS:
            start = time.perf_counter()
            dead = killed(mutant, Path(folder))
            kills += dead
            print(f"{'killed  ' if dead else 'SURVIVED'} {mutant.name} ({time.perf_counter() - start:.0f} s)")
    print(f"kill rate {kills}/{len(MUTANTS)} = {kills / len(MUTANTS):.0%}")
    sys.exit(0 if kills == len(MUTANTS) else 1)


if __name__ == "__main__":
    main()
