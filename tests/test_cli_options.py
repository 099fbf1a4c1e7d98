"""The check options that change what is compared (--rtol/--atol, --n-inputs, --dtype, --seeds with a
failing seed), and golden / convert --flax, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_flax2torch

MODULE = """
import functools
import flax.linen as nn
import jax
import torch

def flax_model():
    return nn.Sequential([nn.Dense(8), jax.nn.hard_tanh, nn.Dense(3)])

def wide_tanh_port():
    # correct where |x| <= 1 or x < -1; wrong above 1 (clips at 1.5): fails on some seeds only
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Hardtanh(-1.0, 1.5), torch.nn.Linear(8, 3))
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "usermodels.py").write_text(MODULE)
    return tmp_path


def _run(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_flax2torch(*args, cwd=directory)


@pytest.mark.slow
def test_explicit_tolerances_replace_the_derived_ones(tmp_path: Path) -> None:
    result = _run(tmp_path, "check", "--json", "--no-grads", "--rtol", "0.01", "--n-inputs", "5")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["settings"]["tolerance"] == "rtol=0.01, atol=1e-05"  # atol from torch's float32 default
    assert document["settings"]["inputs"] == "shape (5, 3), given"  # x = e1 plus 4 random rows
    refused = _run(tmp_path, "check", "--atol", "-1")
    assert refused.returncode == 2
    assert "--atol must be a finite number >= 0" in refused.stderr


@pytest.mark.slow
def test_dtype_casts_both_sides(tmp_path: Path) -> None:
    result = _run(tmp_path, "check", "--json", "--dtype", "bfloat16", "--hidden", "16")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["settings"]["dtype"] == "bfloat16"
    assert document["ok"] is True


@pytest.mark.slow
def test_seeds_name_the_failing_ones(project: Path) -> None:
    args = ("check", "--flax", "usermodels:flax_model", "--torch", "usermodels:wide_tanh_port", "--in-features", "5")
    result = _run(project, *args, "--seeds", "12", "--n-inputs", "2", "--no-grads", "--json")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    failed = document["failed_seeds"]
    assert failed, document
    assert len(failed) < 12  # some seeds never reach x > 1 in that layer: they pass, as they should
    single = _run(project, *args, "--seed", str(failed[0]), "--n-inputs", "2", "--no-grads")
    assert single.returncode == 1
    assert "NOT EQUIVALENT" in single.stdout
    passing = next(seed for seed in document["seeds"] if seed not in failed)
    assert _run(project, *args, "--seed", str(passing), "--n-inputs", "2", "--no-grads").returncode == 0


@pytest.mark.slow
def test_golden_writes_variables_inputs_and_both_outputs(tmp_path: Path) -> None:
    from safetensors import safe_open

    result = _run(tmp_path, "golden", "g.safetensors", "--n-inputs", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote g.safetensors: 9 tensors; flax vs torch max abs difference")
    with safe_open(str(tmp_path / "g.safetensors"), framework="np") as golden:
        keys = set(golden.keys())
        assert golden.get_tensor("inputs").shape == (4, 3)
        assert golden.metadata()["widths"] == "3-4-4-2"
    assert {"inputs", "outputs/flax", "outputs/torch", "state/0.weight", "state/4.bias"} <= keys


def test_convert_with_a_user_model(project: Path) -> None:
    import jax
    from flax import serialization
    from safetensors import safe_open

    sys.path.insert(0, str(project))
    try:
        import usermodels  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(project))
    variables = usermodels.flax_model().init(jax.random.PRNGKey(3), np.ones((1, 5), np.float32))
    (project / "w.msgpack").write_bytes(serialization.to_bytes(variables))
    result = _run(
        project, "convert", "w.msgpack", "w.safetensors", "--flax", "usermodels:flax_model", "--in-features", "5"
    )
    assert result.returncode == 0, result.stderr
    assert "check: EQUIVALENT" in result.stdout
    with safe_open(str(project / "w.safetensors"), framework="np") as converted:
        np.testing.assert_array_equal(
            converted.get_tensor("2.weight"), np.asarray(variables["params"]["layers_2"]["kernel"]).T
        )


@pytest.mark.slow
def test_seeds_in_bfloat16(tmp_path: Path) -> None:
    """The vectorised sweep reads bfloat16 tensors back through the bridge's own conversion."""
    result = _run(tmp_path, "check", "--seeds", "3", "--dtype", "bfloat16", "--hidden", "8", "--no-grads")
    assert result.returncode == 0, result.stderr
    assert "3/3 seeds equivalent; largest err/tol" in result.stdout
