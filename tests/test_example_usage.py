"""The README's example of checking a port in a user's own test suite (the ``flax_torch_check`` fixture of the
package's pytest plugin, and ``assert_equivalent``), run as written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

import bridge

pytest_plugins = ["pytester"]


def build_flax_model() -> tuple[nn.Module, Any]:
    model = nn.Sequential([nn.Dense(16), jax.nn.relu, nn.Dense(4)])
    return model, model.init(jax.random.PRNGKey(0), np.ones((1, 8), np.float32))


def build_torch_port() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def test_my_port_matches_flax(flax_torch_check: Any) -> None:
    model, variables = build_flax_model()
    port = build_torch_port().eval()
    bridge.load_into(model, variables, port)
    flax_torch_check(model, variables, port)


def test_the_example_fails_loudly_on_a_bad_port() -> None:
    model, variables = build_flax_model()
    port = build_torch_port().eval()  # torch's own init: never Flax's
    with pytest.raises(AssertionError, match=r"(?s)NOT EQUIVALENT.*first divergence: position 0") as failed:
        bridge.assert_equivalent(model, variables, port)
    assert isinstance(failed.value, bridge.NotEquivalentError)  # one "not equivalent" across the API
    assert not failed.value.report.ok


INNER_TEST = """
import flax.linen as nn, jax, numpy as np, torch

def test_a_port_left_at_torch_init(flax_torch_check):
    model = nn.Sequential([nn.Dense(4), jax.nn.relu, nn.Dense(2)])
    variables = model.init(jax.random.PRNGKey(0), np.ones((1, 3), np.float32))
    port = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
    flax_torch_check(model, variables, port)
"""


def test_the_plugin_is_registered_and_a_failed_check_attaches_its_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=INNER_TEST)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:xdist", "-rA")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*NotEquivalentError*", "*Captured flax-torch-bridge report call*", "*NOT EQUIVALENT*", "HTML report: *"]
    )
    page = Path(result.stdout.str().split("HTML report: ")[1].split()[0])
    assert ">NOT EQUIVALENT</h1>" in page.read_text()
