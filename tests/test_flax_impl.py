"""The seed problem in Flax: shapes, the exact parameter tree, batching, and argument validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models import assert_matches_flax

import flax_impl


def test_seed_example_has_the_documented_shape_and_param_tree() -> None:
    x = jnp.array([1.0, 0.0, 0.0])
    _, variables = flax_impl.init_variables(flax_impl.validate_run_arguments(0, x, 4, 2))
    shapes = jax.tree_util.tree_map(jnp.shape, variables)
    # DESIGN.md: the compact form binds the Dense layers to the outer module (no Sequential_0 level).
    assert shapes == {
        "params": {
            "Dense_0": {"kernel": (3, 4), "bias": (4,)},
            "Dense_1": {"kernel": (4, 4), "bias": (4,)},
            "Dense_2": {"kernel": (4, 2), "bias": (2,)},
        }
    }
    assert flax_impl.run(0.0, x, 4.0, 2.0).shape == (2,)


def test_run_equals_the_explicit_computation() -> None:
    x = np.array([0.5, -1.0, 2.0], np.float32)
    _, variables = flax_impl.init_variables(flax_impl.validate_run_arguments(3, x, 5, 2))
    p = variables["params"]
    h = np.maximum(x @ np.asarray(p["Dense_0"]["kernel"]) + np.asarray(p["Dense_0"]["bias"]), 0)
    h = np.maximum(h @ np.asarray(p["Dense_1"]["kernel"]) + np.asarray(p["Dense_1"]["bias"]), 0)
    expected = h @ np.asarray(p["Dense_2"]["kernel"]) + np.asarray(p["Dense_2"]["bias"])
    model, _ = flax_impl.init_variables(flax_impl.validate_run_arguments(3, x, 5, 2))
    assert_matches_flax(model, variables, x[None], np.asarray(flax_impl.run(3, x, 5, 2))[None])
    assert_matches_flax(model, variables, x[None], expected[None])


def test_float_arguments_are_cast_to_int() -> None:
    x = jnp.array([1.0, 2.0])
    np.testing.assert_array_equal(np.asarray(flax_impl.run(7.0, x, 3.0, 2.0)), np.asarray(flax_impl.run(7, x, 3, 2)))


def test_batched_input_gives_the_rows_of_single_inputs(rng: np.random.Generator) -> None:
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    batched = np.asarray(flax_impl.run(1, x, 6, 3))
    assert batched.shape == (2, 3, 3)
    single = np.asarray(flax_impl.run(1, x[1, 2], 6, 3))
    model, variables = flax_impl.init_variables(flax_impl.validate_run_arguments(1, x, 6, 3))
    assert_matches_flax(model, variables, x[1, 2][None], batched[1, 2][None])  # batching may change the kernel
    assert_matches_flax(model, variables, x[1, 2][None], single[None])


def test_different_seeds_give_different_outputs() -> None:
    x = jnp.array([1.0, 0.0, 0.0])
    assert not np.array_equal(np.asarray(flax_impl.run(0, x, 4, 2)), np.asarray(flax_impl.run(1, x, 4, 2)))


def test_nan_in_x_propagates() -> None:
    out = np.asarray(flax_impl.run(0, jnp.array([np.nan, 0.0, 0.0]), 4, 2))
    assert np.isnan(out).all()


@pytest.mark.parametrize(
    ("seed", "x", "hidden", "out", "match"),
    [
        (1.5, [1.0], 4, 2, "seed must be integral"),
        (float("nan"), [1.0], 4, 2, "seed must be finite"),
        (float("inf"), [1.0], 4, 2, "seed must be finite"),
        (-1, [1.0], 4, 2, "seed must be >= 0"),
        (2**32, [1.0], 4, 2, "seed must be >= 0 and < 4294967296"),
        (True, [1.0], 4, 2, "seed must be an integral number"),
        ("0", [1.0], 4, 2, "seed must be an integral number"),
        (0, [1.0], 0, 2, "hidden must be >= 1"),
        (0, [1.0], -3, 2, "hidden must be >= 1"),
        (0, [1.0], 2.5, 2, "hidden must be integral"),
        (0, [1.0], 4, 0, "out must be >= 1"),
        (0, 1.0, 4, 2, "x must have rank >= 1"),
        (0, np.zeros((2, 0)), 4, 2, "x must have at least one feature"),
        (0, ["a"], 4, 2, "x must hold real numbers"),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_bad_arguments_raise_a_value_error_naming_the_argument(seed, x, hidden, out, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(flax_impl.InvalidArgumentError, match=match) as info:
        flax_impl.run(seed, x, hidden, out)
    assert isinstance(info.value, ValueError)
