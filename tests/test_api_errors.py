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


def test_the_argument_orders_before_0_2_still_work_with_a_deprecation_warning() -> None:
    model = nn.Sequential([nn.Dense(4), jax.nn.relu, nn.Dense(2)])
    variables = model.init(jax.random.PRNGKey(0), np.ones((1, 3), np.float32))
    new_port = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    old_port = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert bridge.load_into(model, variables, new_port) is new_port
    with pytest.warns(DeprecationWarning, match=r"call load_into\(model, variables, torch_module\)"):
        assert bridge.load_into(old_port, model, variables) is old_port  # type: ignore[arg-type]
    for new, old in zip(new_port.state_dict().values(), old_port.state_dict().values(), strict=True):
        assert torch.equal(new, old)
    state = bridge.to_state_dict(model, variables)
    back = bridge.from_state_dict(model, variables, state)
    with pytest.warns(DeprecationWarning, match=r"call from_state_dict\(model, variables, state_dict\)"):
        old_back = bridge.from_state_dict(model, state, variables)  # type: ignore[arg-type]
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, back, old_back))
