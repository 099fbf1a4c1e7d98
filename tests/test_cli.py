"""The flax2torch command line: outputs, exit codes 0/1/2, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_flax2torch

from bridge.cli import main


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return run_flax2torch(*args)


@pytest.mark.slow
def test_check_with_no_arguments_runs_the_seed_problem() -> None:
    result = _run("check")
    assert result.returncode == 0, result.stderr
    assert "seed 0, x = [1. 0. 0.], widths 3-4-4-2" in result.stdout
    # the printed digits depend on the machine's kernels: tests/test_readme.py compares them within tolerance
    lines = result.stdout.splitlines()
    assert lines[1].startswith("flax : [")
    assert lines[2].startswith("torch: [")
    assert len(lines[1].split("[")[1].split()) == len(lines[2].split("[")[1].split()) == 2
    assert "equivalence check: EQUIVALENT" in result.stdout


def test_check_options_change_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--seed", "7", "--in-features", "5", "--hidden", "8", "--out", "3"]) == 0
    out = capsys.readouterr().out
    assert "seed 7, x = [1. 0. 0. 0. 0.], widths 5-8-8-3" in out
    assert len(out.split("flax : [")[1].split("]")[0].split()) == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "--hidden", "0"], "flax2torch check: error: hidden must be >= 1, got 0"),
        (["check", "--seed", "1.5"], "flax2torch check: error: argument --seed: invalid int value: '1.5'"),
        (["check", "--in-features", "0"], "flax2torch check: error: x must have at least one feature"),
        (["check", "--seed", "-1"], "flax2torch check: error: --seed must be an integer in [0, 2**32), got -1"),
        ([], "flax2torch: error: the following arguments are required: command"),
        (["frobnicate"], "flax2torch: error: argument command: invalid choice: 'frobnicate'"),
    ],
    ids=["hidden-0", "seed-fraction", "no-features", "negative-seed", "no-command", "unknown-command"],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = _run(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(message)
    assert "Traceback" not in result.stderr


PORTS_MODULE = """
import flax.linen as nn
import jax
import torch

def flax_model():
    return nn.Sequential([nn.Dense(8), jax.nn.relu, nn.Dense(3)])

def good_port():
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

def tanh_port():
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))

not_a_model = 42
"""


@pytest.fixture
def ports_dir(tmp_path: Path) -> Path:
    (tmp_path / "myports.py").write_text(PORTS_MODULE)
    return tmp_path


def _run_in(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_flax2torch(*args, cwd=directory)


@pytest.mark.slow
def test_json_report_is_machine_readable() -> None:
    result = _run("check", "--json", "--no-grads")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is True
    assert document["seed"] == 0
    assert [row["kind"] for row in document["layers"]] == ["Dense", "relu", "Dense", "relu", "Dense"]
    assert document["gradients"] == []


@pytest.mark.slow
def test_several_seeds_end_with_a_summary_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--seeds", "3", "--seed", "5", "--hidden", "16", "--no-grads"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("3/3 seeds equivalent; largest err/tol ")


@pytest.mark.slow
def test_user_model_and_good_port_pass(ports_dir: Path) -> None:
    result = _run_in(
        ports_dir, "check", "--flax", "myports:flax_model", "--torch", "myports:good_port", "--in-features", "5"
    )
    assert result.returncode == 0, result.stderr
    assert "equivalence check: EQUIVALENT" in result.stdout


@pytest.mark.slow
def test_user_port_with_a_bug_exits_1_and_names_it(ports_dir: Path) -> None:
    result = _run_in(
        ports_dir, "check", "--flax", "myports:flax_model", "--torch", "myports:tanh_port", "--in-features", "5"
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.strip() == (
        "NOT EQUIVALENT: the Flax weights do not fit the port: cannot load into the torch module: Flax relu -> torch 1: expected torch ReLU, found Tanh"
    )


@pytest.mark.slow
def test_user_port_with_its_own_weights_is_checked_as_it_is(ports_dir: Path) -> None:
    """--keep-torch-weights: the port's own (torch-initialised) weights differ from Flax's, at position 0."""
    args = ("check", "--flax", "myports:flax_model", "--torch", "myports:good_port", "--in-features", "5")
    result = _run_in(ports_dir, *args, "--keep-torch-weights", "--no-grads")
    assert result.returncode == 1, result.stderr
    assert ">> first divergence: position 0 (Dense at 'layers_0' <-> torch '0'), isolated" in result.stdout
    assert "hint: torch weight differs from Flax params/kernel (laid out for torch)" in result.stdout


@pytest.mark.slow
def test_user_model_without_a_port_is_converted_and_checked_in_bfloat16(ports_dir: Path) -> None:
    result = _run_in(ports_dir, "check", "--flax", "myports:flax_model", "--in-features", "5", "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    assert "dtype bfloat16" in result.stdout


@pytest.mark.slow
def test_float64_enables_64_bit_jax(capsys: pytest.CaptureFixture[str]) -> None:
    result = _run("check", "--dtype", "float64", "--no-grads")
    assert result.returncode == 0, result.stderr
    assert "dtype float64" in result.stdout


@pytest.mark.slow
def test_saved_params_are_used(ports_dir: Path) -> None:
    import jax
    import numpy as np
    from flax import serialization

    sys.path.insert(0, str(ports_dir))
    try:
        import myports  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ports_dir))
    variables = myports.flax_model().init(jax.random.PRNGKey(7), np.ones((1, 5), np.float32))
    (ports_dir / "weights.msgpack").write_bytes(serialization.to_bytes(variables))
    result = _run_in(
        ports_dir,
        "check",
        "--flax",
        "myports:flax_model",
        "--params",
        "weights.msgpack",
        "--in-features",
        "5",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True
    (ports_dir / "bad.msgpack").write_bytes(b"\x00\x01garbage")
    result = _run_in(
        ports_dir, "check", "--flax", "myports:flax_model", "--params", "bad.msgpack", "--in-features", "5"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "bad.msgpack" in result.stderr


def test_plot_writes_a_png_and_replaces_only_its_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "errors.png"
    assert main(["check", "--no-grads", "--plot", str(target)]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["check", "--no-grads", "--plot", str(target)]) == 0  # its own earlier plot: replaced
    assert [p.name for p in tmp_path.iterdir()] == ["errors.png"]  # no temporary file left
    notes = tmp_path / "mine.png"  # a picture of the user's own (matplotlib's or any other program's)
    notes.write_text("mine")
    capsys.readouterr()
    assert main(["check", "--no-grads", "--plot", str(notes)]) == 2  # refused before the check runs
    assert "is not a report flax-torch-bridge wrote" in capsys.readouterr().err
    assert notes.read_text() == "mine"
    import flax.linen as nn
    import jax
    import numpy as np

    import bridge
    from bridge.check import plot_report

    model = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2)])
    variables = model.init(jax.random.PRNGKey(0), np.ones((1, 4), np.float32))
    report = bridge.check_equivalence(model, variables, bridge.to_torch(model, variables), grads=False)
    with pytest.raises(bridge.InvalidArgumentError, match="not a report flax-torch-bridge wrote"):
        plot_report(report, notes)
    assert notes.read_text() == "mine"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["check", "--flax", "nonexistent_module_xyz:Model"],
            "flax2torch check: error: --flax nonexistent_module_xyz:Model: No module named",
        ),
        (["check", "--flax", "myports"], "flax2torch check: error: --flax takes MODULE:ATTR"),
        (
            ["check", "--flax", "myports:not_a_model"],
            "flax2torch check: error: --flax myports:not_a_model is a int, not a Flax or torch module",
        ),
        (["check", "--torch", "myports:good_port"], "flax2torch check: error: --torch needs --flax"),
        (
            ["check", "--flax", "myports:flax_model", "--in-features", "5", "--params", "missing.msgpack"],
            "flax2torch check: error: missing.msgpack: no such file",
        ),
        (["check", "--seeds", "0"], "flax2torch check: error: argument --seeds: must be >= 1"),
        (["check", "--dtype", "float8"], "flax2torch check: error: argument --dtype: invalid choice"),
    ],
    ids=["no-module", "no-attr", "not-a-model", "torch-alone", "missing-params", "zero-seeds", "bad-dtype"],
)
def test_user_model_errors_exit_2_with_one_line(ports_dir: Path, args: list[str], message: str) -> None:
    result = _run_in(ports_dir, *args)
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(message)


@pytest.mark.slow
def test_compiled_programs_are_kept_between_runs_unless_turned_off(tmp_path: Path) -> None:
    cache = tmp_path / "xla"
    env = {**os.environ, "FLAX2TORCH_COMPILE_CACHE": str(cache)}
    runs = [
        subprocess.run([sys.executable, "-m", "bridge", "check"], capture_output=True, text=True, timeout=300, env=env)
        for _ in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert runs[0].stdout == runs[1].stdout  # read back from the cache, the programs compute the same
    assert len(list(cache.iterdir())) >= 3  # init, gradients in two precisions
    off = tmp_path / "unused"
    env["FLAX2TORCH_COMPILE_CACHE"] = "off"
    env["XDG_CACHE_HOME"] = str(off)
    assert subprocess.run([sys.executable, "-m", "bridge", "check", "--no-grads"], env=env, timeout=300).returncode == 0
    assert not off.exists()
