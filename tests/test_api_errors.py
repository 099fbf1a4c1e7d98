"""Bad inputs to the public functions give a BridgeError that names the problem and the fix, never a raw
exception from NumPy, torch or JAX."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import bridge

MODEL = nn.Sequential([nn.Dense(4), jax.nn.relu, nn.Dense(2)])
VARIABLES = MODEL.init(jax.random.PRNGKey(0), np.ones((1, 3), np.float32))
PORT = bridge.to_torch(MODEL, VARIABLES)
TUPLE_MODEL = nn.Sequential([nn.Dense(4), lambda x: (x, x)])
ZERO_WIDTH = {"params": {"layers_0": {"kernel": np.zeros((3, 0), np.float32), "bias": np.zeros(0, np.float32)}}}

CASES: list[tuple[str, Callable[[], Any], str]] = [
    (
        "empty batch",
        lambda: bridge.check_equivalence(MODEL, VARIABLES, PORT, np.zeros((0, 3), np.float32)),
        "hold no values",
    ),
    ("integer dtype", lambda: bridge.check_equivalence(MODEL, VARIABLES, PORT, dtype="int32"), "not a floating dtype"),
    (
        "negative seed",
        lambda: bridge.check_equivalence(MODEL, VARIABLES, PORT, seed=-1),
        r"seed must be an integer in \[0, 2\*\*32\)",
    ),
    ("seed 2**32", lambda: bridge.check_equivalence(MODEL, VARIABLES, PORT, seed=2**32), "seed must be an integer"),
    (
        "integer parameters",
        lambda: bridge.to_torch(MODEL, jax.tree_util.tree_map(lambda a: a.astype(jnp.int32), VARIABLES)),
        r"layer 0 \(Dense at 'layers_0'\): params/bias is int32",
    ),
    (
        "a layer returning a tuple",
        lambda: bridge.check_equivalence(
            TUPLE_MODEL,
            TUPLE_MODEL.init(jax.random.PRNGKey(0), np.ones((1, 3), np.float32)),
            torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Identity()),
            np.ones((2, 3), np.float32),
        ),
        "layer 1 of the chain returns a tuple, not an array",
    ),
    ("zero-width layer", lambda: bridge.to_torch(nn.Sequential([nn.Dense(0)]), ZERO_WIDTH), "a layer of width 0"),
]


@pytest.mark.parametrize(("name", "call", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_inputs_raise_bridge_errors_with_the_fix(name: str, call: Callable[[], Any], message: str) -> None:
    with pytest.raises(bridge.BridgeError, match=message):
        call()
