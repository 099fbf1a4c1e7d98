"""Shared fixtures and settings: fixed seeds, hypothesis profiles, and small model builders."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import pytest
from hypothesis import settings

# Derandomised: CI runs the same examples every time; the "thorough" profile explores new ones.
settings.register_profile("default", deadline=None, max_examples=40, print_blob=True, derandomize=True)
settings.register_profile("thorough", deadline=None, max_examples=400, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The command line keeps XLA programs in a persistent cache: off in tests (commands run in this
# process would turn it on for every later compilation); tests/test_cli.py turns it on where it tests it.
os.environ["FLAX2TORCH_COMPILE_CACHE"] = "off"


class SetupMLP(nn.Module):
    """The same MLP with the Sequential built in ``setup`` (params under ``net/layers_{0,2,4}``)."""

    hidden: int
    out: int

    def setup(self) -> None:
        self.net = nn.Sequential(
            [nn.Dense(self.hidden), jax.nn.relu, nn.Dense(self.hidden), jax.nn.relu, nn.Dense(self.out)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.net(x)


def sequential_mlp(hidden: int, out: int) -> nn.Sequential:
    """The same MLP with the Sequential as the model itself (params under ``layers_{0,2,4}``)."""
    return nn.Sequential([nn.Dense(hidden), jax.nn.relu, nn.Dense(hidden), jax.nn.relu, nn.Dense(out)])


def init(model: nn.Module, in_features: int, seed: int = 0) -> Any:
    """``model.init`` on a batch of ones of width ``in_features``."""
    return model.init(jax.random.PRNGKey(seed), np.ones((1, in_features), np.float32))


@pytest.fixture
def rng() -> np.random.Generator:
    """A NumPy generator with a fixed seed, so that every run draws the same inputs."""
    return np.random.default_rng(20261125)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_flax2torch(*args: str, cwd: Any = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m bridge ARGS`` in a real process (for what only a process shows: exit statuses of user code
    that exits, imports from the current folder, start-up cost); everything else runs ``bridge.cli.main``
    in-process. The project is found through ``PYTHONPATH`` wherever ``cwd`` is."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, environment.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "bridge", *args]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)
