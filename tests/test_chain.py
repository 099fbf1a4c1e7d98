"""Chain discovery: every layout DESIGN.md lists, and clear errors for models that are not one chain."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SetupMLP, init, sequential_mlp

import bridge
import flax_impl
from bridge.capture import discover_chain


@pytest.mark.parametrize(
    ("model", "paths"),
    [
        (flax_impl.SeqMLP(4, 2), [("Dense_0",), (), ("Dense_1",), (), ("Dense_2",)]),
        (SetupMLP(4, 2), [("net", "layers_0"), (), ("net", "layers_2"), (), ("net", "layers_4")]),
        (sequential_mlp(4, 2), [("layers_0",), (), ("layers_2",), (), ("layers_4",)]),
    ],
    ids=["compact", "setup", "sequential-as-model"],
)
def test_chain_is_found_in_every_layout(model: nn.Module, paths: list[tuple[str, ...]]) -> None:
    variables = init(model, 3)
    steps = discover_chain(model, variables)
    assert [step.flax_path for step in steps] == paths
    assert [step.kind for step in steps] == ["Dense", "relu", "Dense", "relu", "Dense"]
    assert [step.index for step in steps] == [0, 1, 2, 3, 4]
    assert steps[0].variables["params"]["kernel"].shape == (3, 4)
    assert steps[1].variables == {}


def test_frozen_variables_are_accepted() -> None:
    model = flax_impl.SeqMLP(4, 2)
    variables = init(model, 3)
    from flax.core import freeze

    steps = discover_chain(model, freeze(variables))
    assert steps[4].variables["params"]["bias"].shape == (2,)


class Explicit(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(2)(jax.nn.relu(nn.Dense(4)(x)))


class ScaledOutput(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return 2.0 * nn.Sequential([nn.Dense(4), jax.nn.relu])(x)


class TransformedInput(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Sequential([nn.Dense(4), jax.nn.relu])(x * 2.0)


class TwoSequentials(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Sequential([nn.Dense(4)])(nn.Sequential([nn.Dense(4)])(x))


class DenseAfterSequential(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(2)(nn.Sequential([nn.Dense(4), jax.nn.relu])(x))


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (Explicit(), r"calls Dense.__call__ at 'Dense_1' outside its nn.Sequential"),
        (ScaledOutput(), "must pass its input to the Sequential unchanged and return the Sequential's output"),
        (TransformedInput(), "must pass its input to the Sequential unchanged"),
        (TwoSequentials(), "calls more than one nn.Sequential"),
        (DenseAfterSequential(), r"calls Dense.__call__ at 'Dense_0' outside its nn.Sequential"),
    ],
    ids=["explicit", "scaled-output", "transformed-input", "two-sequentials", "dense-after"],
)
def test_models_that_are_not_one_chain_are_refused(model: nn.Module, match: str) -> None:
    variables = init(model, 3)
    with pytest.raises(bridge.UnsupportedModelError, match=match):
        bridge.to_torch(model, variables)


def test_variables_outside_the_chain_are_named() -> None:
    model = flax_impl.SeqMLP(4, 2)
    variables: Any = jax.tree_util.tree_map(lambda a: a, init(model, 3))
    variables["params"]["Stray_0"] = {"w": jnp.zeros(3)}
    with pytest.raises(bridge.UnsupportedModelError, match=r"no layer of its nn\.Sequential owns: params/Stray_0/w"):
        bridge.to_torch(model, variables)


def test_non_module_and_non_mapping_inputs_are_refused() -> None:
    with pytest.raises(bridge.UnsupportedModelError, match=r"expected a flax\.linen Module"):
        discover_chain(lambda x: x, {})  # type: ignore[arg-type]
    with pytest.raises(bridge.UnsupportedModelError, match="variables must be the mapping"):
        discover_chain(flax_impl.SeqMLP(4, 2), np.zeros(3))  # type: ignore[arg-type]
