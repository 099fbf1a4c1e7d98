"""Progress: a transient status line on a terminal's stderr for long operations, never in --json output, never
when stderr is a file; library users get the same lines through ``bridge.show_progress``."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from tree_models import ResNet, TorchResNet

import bridge
from bridge.cli import main

ROOT = Path(__file__).resolve().parent.parent
CHECK = ["check", "--flax", "native_models:PoolCNN", "--input-shape", "2,12,12,3", "--n-inputs", "2"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _on_terminal(monkeypatch: pytest.MonkeyPatch) -> _Terminal:
    """stderr as a terminal; called in the test body (capsys re-installs its own capture when the call begins)."""
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    screen = _Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    return screen


def test_a_check_on_a_terminal_shows_its_phases(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = _on_terminal(monkeypatch)
    assert main(CHECK) == 0
    shown = terminal.getvalue()
    assert "flax2torch check: " in shown
    assert "EQUIVALENT" in capsys.readouterr().out  # the report itself is on stdout, as without a terminal


@pytest.mark.parametrize("flag", ["--json", "--quiet"])
def test_json_and_quiet_show_no_progress(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    terminal = _on_terminal(monkeypatch)
    assert main([*CHECK, flag]) == 0
    assert "flax2torch check: " not in terminal.getvalue()
    out = capsys.readouterr().out
    if flag == "--json":
        assert json.loads(out)["ok"] is True


def test_no_progress_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    file = io.StringIO()
    monkeypatch.setattr(sys, "stderr", file)
    assert main(CHECK) == 0
    assert file.getvalue() == ""


def _resnet() -> tuple[Any, Any, np.ndarray]:
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 2)).astype(np.float32)
    model = ResNet()
    return model, model.init(jax.random.PRNGKey(0), x), x


def test_show_progress_gives_a_tree_checks_phases_in_order() -> None:
    model, variables, x = _resnet()
    port = bridge.load_into(model, variables, TorchResNet().eval(), inputs=x, channels_last=False)
    lines: list[str] = []
    with bridge.show_progress(lines.append):
        assert bridge.check_equivalence(model, variables, port, x, channels_last=False).ok
    phases = [
        "running the Flax model",
        "running the port",
        "matching",
        "comparing call 1 of",
        "comparing the gradients",
    ]
    firsts = [next(i for i, line in enumerate(lines) if line.startswith(p)) for p in phases]
    assert firsts == sorted(firsts)
    assert sum(line.startswith("comparing call") for line in lines) == len(
        bridge.check_equivalence(model, variables, port, x, channels_last=False, grads=False).layers
    )
    lines.clear()
    bridge.check_equivalence(model, variables, port, x, channels_last=False)
    assert lines == []  # no sink outside the block: nothing is collected


@pytest.mark.slow
def test_a_tree_sweep_names_the_seed_of_each_line() -> None:
    model, variables, x = _resnet()
    port = bridge.load_into(model, variables, TorchResNet().eval(), inputs=x, channels_last=False)
    lines: list[str] = []
    with bridge.show_progress(lines.append):
        bridge.check_equivalence(model, variables, port, x, channels_last=False, seeds=range(2), grads=False)
    assert any(line.startswith("seed 1 of 2: comparing call") for line in lines)
    assert any(line.startswith("seed 2 of 2: comparing call") for line in lines)


def test_the_report_is_drawn_with_rich_on_a_terminal_and_plain_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    screen = _Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setenv("COLUMNS", "200")  # a terminal wide enough for the table
    assert main([*CHECK, "--quiet"]) == 0
    drawn = screen.getvalue()
    assert "\x1b[" in drawn  # coloured
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)
    for expected in ("flax-torch-bridge equivalence check: EQUIVALENT", "Conv_0", "Dense_0", "output"):
        assert expected in plain
    for narrow_or_not_a_terminal in (_Terminal(), io.StringIO()):
        monkeypatch.setenv("COLUMNS", "60")  # too narrow: the plain text, not columns cut short
        monkeypatch.setattr(sys, "stdout", narrow_or_not_a_terminal)
        assert main([*CHECK, "--quiet"]) == 0
        assert "\x1b[" not in narrow_or_not_a_terminal.getvalue()
        assert narrow_or_not_a_terminal.getvalue().startswith("flax-torch-bridge equivalence check: EQUIVALENT\n")


def test_show_progress_gives_a_chain_checks_phases() -> None:
    import flax.linen as nn
    import torch

    model = nn.Sequential([nn.Dense(4), jax.nn.relu, nn.Dense(2)])
    variables = model.init(jax.random.PRNGKey(0), np.ones((1, 3), np.float32))
    port = bridge.to_torch(model, variables)
    assert isinstance(port, torch.nn.Sequential)
    lines: list[str] = []
    with bridge.show_progress(lines.append):
        assert bridge.check_equivalence(model, variables, port).ok
    assert [line.split(" (")[0] for line in lines] == [
        "running the Flax model, recording its calls",  # a chain is captured and paired as a tree is
        "running the port, recording its calls",
        "matching 4 Flax calls with 4 torch calls",  # each side's Sequential and its 3 positions (relu too)
        "comparing call 1 of 3: layers_0",  # one line per pair, as for a tree
        "comparing call 2 of 3: relu",
        "comparing call 3 of 3: layers_2",
        "comparing the gradients",
        "locating the first divergence",
    ]
