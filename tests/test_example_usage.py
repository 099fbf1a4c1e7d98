"""The README's example of ``assert_equivalent`` in a user's own test suite, run as written."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

import bridge


def build_flax_model() -> tuple[nn.Module, Any]:
    model = nn.Sequential([nn.Dense(16), jax.nn.relu, nn.Dense(4)])
    return model, model.init(jax.random.PRNGKey(0), np.ones((1, 8), np.float32))


def build_torch_port() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def test_my_port_matches_flax() -> None:
    model, variables = build_flax_model()
    port = build_torch_port().eval()
    bridge.load_into(port, model, variables)
    bridge.assert_equivalent(model, variables, port)


def test_the_example_fails_loudly_on_a_bad_port() -> None:
    model, variables = build_flax_model()
    port = build_torch_port().eval()  # torch's own init: never Flax's
    with pytest.raises(AssertionError, match=r"(?s)NOT EQUIVALENT.*first divergence: position 0"):
        bridge.assert_equivalent(model, variables, port)
