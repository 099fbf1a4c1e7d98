"""The HTML report in a real browser (Debian's chromium, headless): the page renders with no console error, its
script runs, and the screenshot shows what the report says (the verdict in red, the first divergence's box,
passing calls in green). Run by ``nox -s html``, which installs chromium; skipped where no chromium is found
unless FLAX2TORCH_REQUIRE_BROWSER=1 (that session sets it, so a missing browser fails there)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from tree_models import ResNet, TorchResNet

import bridge

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("FLAX2TORCH_REQUIRE_BROWSER"):
        raise RuntimeError("FLAX2TORCH_REQUIRE_BROWSER is set but no chromium is installed")
    pytest.skip("no chromium here (nox -s html installs it)", allow_module_level=True)

_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1300,1000")


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *_FLAGS, "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def failing_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A ResNet port whose second block lost its residual: NOT EQUIVALENT, located at that block."""
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 2)).astype(np.float32)
    model = ResNet()
    variables = model.init(jax.random.PRNGKey(0), x)
    port = bridge.load_into(model, variables, TorchResNet(residual=False).eval(), inputs=x, channels_last=False)
    report = bridge.check_equivalence(model, variables, port, x, channels_last=False)
    path = tmp_path_factory.mktemp("html") / "report.html"
    report.to_html(path)
    return path, report


def test_the_page_renders_with_no_console_error_and_its_script_runs(failing_report: tuple[Path, Any]) -> None:
    path, report = failing_report
    run = _chromium("--dump-dom", path.as_uri())
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert console == []
    assert 'data-ready="yes"' in run.stdout  # set by the page's script once its buttons are wired
    assert "first divergence" in run.stdout
    assert report.first_divergence.flax_path in run.stdout


def test_the_screenshot_shows_the_verdict_the_divergence_and_the_passing_calls(
    failing_report: tuple[Path, Any], tmp_path: Path
) -> None:
    import matplotlib.image

    path, _ = failing_report
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", path.as_uri())
    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)
    assert pixels.shape[:2] == (1000, 1300)

    def covered(colour: tuple[int, int, int], rows: slice, tolerance: int = 6) -> int:
        return int((np.abs(pixels[rows] - np.array(colour)).max(axis=-1) <= tolerance).sum())

    assert covered((0xB3, 0x26, 0x1E), slice(0, 60)) > 100  # the NOT EQUIVALENT heading, red, at the top
    assert covered((0xFD, 0xEC, 0xEA), slice(60, 200)) > 20_000  # the first divergence's box under it
    green = (np.abs(pixels[:, :, 1] - pixels[:, :, 0]) > 40) & (pixels[:, :, 1] > 190)  # passing calls' cells
    assert green.sum() > 2_000


def test_a_passing_report_has_no_divergence_box(tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 2)).astype(np.float32)
    model = ResNet()
    variables = model.init(jax.random.PRNGKey(0), x)
    port = bridge.load_into(model, variables, TorchResNet().eval(), inputs=x, channels_last=False)
    path = tmp_path / "ok.html"
    bridge.check_equivalence(model, variables, port, x, channels_last=False, grads=False).to_html(path)
    dom = _chromium("--dump-dom", path.as_uri()).stdout
    assert re.search(r"<h1[^>]*>EQUIVALENT</h1>", dom)
    assert "first-divergence" not in dom
