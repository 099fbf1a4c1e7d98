"""The README's printed examples are what the code prints: the same lines, labels and verdicts, and
numbers that agree within the checker's derived tolerance (never their last digits, which depend on
the machine's kernels)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from models import assert_matches_flax

import bridge
import flax_impl

README = (Path(__file__).parent.parent / "README.md").read_text()


def _block_after(marker: str) -> list[str]:
    """The lines of the first fenced block that follows ``marker`` in the README."""
    start = README.index("```", README.index(marker) + len(marker)) + 3
    body = README[README.index("\n", start) + 1 : README.index("```", start)]
    return body.rstrip("\n").splitlines()


def _floats(line: str) -> np.ndarray:
    return np.array([float(v) for v in line.split("[", 1)[1].rstrip("]").split()], np.float32)


@pytest.mark.slow
def test_quickstart_output_is_what_check_prints() -> None:
    shown = _block_after("converts it, runs both and prints:")
    result = subprocess.run([sys.executable, "-m", "bridge", "check"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()[: len(shown)]
    assert printed[0] == shown[0]
    model = flax_impl.SeqMLP(4, 2)
    x = np.array([[1.0, 0.0, 0.0]], np.float32)
    variables = model.init(jax.random.PRNGKey(0), x[0])
    for index, label in ((1, "flax : ["), (2, "torch: [")):
        assert printed[index].startswith(label)
        assert_matches_flax(model, variables, x, _floats(shown[index])[None])
        assert_matches_flax(model, variables, x, _floats(printed[index])[None])
    assert re.fullmatch(r"max abs difference: \d\.\d{3}e[+-]\d\d", printed[3]), printed[3]
    assert re.fullmatch(r"max abs difference: \d\.\d{3}e[+-]\d\d", shown[3]), shown[3]


def test_the_untransposed_kernel_report_is_what_the_checker_prints() -> None:
    """The README's real run: SeqMLP(hidden=8, out=8), port[2].weight = Dense_1's kernel untransposed."""
    shown = _block_after("Here a square kernel was loaded untransposed")[1:]  # without the $ line
    model = flax_impl.SeqMLP(8, 8)
    variables = model.init(jax.random.PRNGKey(0), np.ones(8, np.float32))
    port = bridge.to_torch(model, variables)
    with torch.no_grad():
        port[2].weight.copy_(torch.from_numpy(np.array(variables["params"]["Dense_1"]["kernel"])))
    printed = str(bridge.check_equivalence(model, variables, port)).splitlines()
    assert len(printed) == len(shown)
    assert printed[:2] == shown[:2]
    columns = shown[2].index("max abs")  # status, position, layer, paths and shape: everything before the numbers
    for mine, theirs in zip(printed[2:-2], shown[2:-2], strict=True):
        assert mine[:columns] == theirs[:columns]
    assert printed[-2:] == shown[-2:]


def test_the_generated_code_shown_is_what_to_torch_writes() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from tree_models import CNN

    model = CNN()
    x = np.zeros((4, 28, 28, 1), np.float32)
    code = bridge.to_torch(model, model.init(jax.random.PRNGKey(0), x), x).code
    shown = _block_after("print(module.code)\n```")
    assert len(shown) > 10
    lines = [line.strip() for line in code.splitlines() if line.strip()]
    position = 0
    for line in (line.strip() for line in shown if line.strip() != "..."):
        assert line in lines[position:], line  # each shown line, in the order shown
        position = lines.index(line, position) + 1
