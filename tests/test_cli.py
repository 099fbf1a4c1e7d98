"""The flax2torch command line: outputs, exit codes 0/1/2, and one-line errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bridge._cli import main


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True, text=True, timeout=300)


def test_check_with_no_arguments_runs_the_seed_problem() -> None:
    result = _run("check")
    assert result.returncode == 0, result.stderr
    assert "seed 0, x = [1. 0. 0.], widths 3-4-4-2" in result.stdout
    assert "flax : [0.1509903 0.0469353]" in result.stdout
    assert "torch: [0.1509903 0.0469353]" in result.stdout
    assert "equivalence check: EQUIVALENT" in result.stdout


def test_check_options_change_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--seed", "7", "--in-features", "5", "--hidden", "8", "--out", "3"]) == 0
    out = capsys.readouterr().out
    assert "seed 7, x = [1. 0. 0. 0. 0.], widths 5-8-8-3" in out
    assert len(out.split("flax : [")[1].split("]")[0].split()) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "--hidden", "0"], "flax2torch check: error: hidden must be >= 1, got 0"),
        (["check", "--seed", "1.5"], "flax2torch check: error: argument --seed: invalid int value: '1.5'"),
        (["check", "--in-features", "0"], "flax2torch check: error: x must have at least one feature"),
        (["check", "--seed", "-1"], "flax2torch check: error: seed must be >= 0"),
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
