"""Small model builders shared by the checker tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np


def relu_mlp(widths: Sequence[int], use_bias: bool = True) -> nn.Sequential:
    """Dense(w1) -> relu -> ... -> Dense(w_last) for widths (in, w1, ..., w_last)."""
    layers: list[Any] = []
    for width in widths[1:-1]:
        layers += [nn.Dense(width, use_bias=use_bias), jax.nn.relu]
    return nn.Sequential([*layers, nn.Dense(widths[-1], use_bias=use_bias)])


def init_with_random_biases(model: nn.Module, in_features: int, seed: int = 0) -> Any:
    """``model.init`` with every bias replaced by normal noise (Flax inits biases to zero, which hides bias bugs)."""
    variables = model.init(jax.random.PRNGKey(seed), np.ones((1, in_features), np.float32))
    rng = np.random.default_rng(seed)

    def noisy(path: tuple[Any, ...], leaf: Any) -> Any:
        name = getattr(path[-1], "key", None)
        return rng.standard_normal(leaf.shape).astype(leaf.dtype) * 0.5 if name == "bias" else leaf

    return jax.tree_util.tree_map_with_path(noisy, variables)


def assert_matches_flax(model: Any, variables: Any, x: np.ndarray, candidate: Any) -> None:
    """``candidate``, another correct implementation's output of the chain ``model`` on ``x``, lies within the
    checker's derived tolerance of Flax's output: never a fixed rtol or bit-equality, which depend on the
    machine's kernels (FMA, blocking, threads)."""
    from bridge._tensors import to_numpy
    from bridge.check import output_tolerance
    from bridge.check._compare import compare

    values = to_numpy(candidate) if hasattr(candidate, "detach") else np.asarray(candidate)
    reference, tolerance = output_tolerance(model, variables, x)
    result = compare(reference, values.reshape(reference.shape) if values.size == reference.size else values, tolerance)
    assert result.ok, (
        f"{result.mismatched} of {result.size} elements outside the derived tolerance: max abs {result.max_abs:.3g} "
        f"at {result.max_abs_index}, err/tol {result.worst_ratio:.3g}"
    )


def small_mlp() -> tuple[nn.Sequential, Any, np.ndarray]:
    """Dense(8) -> relu -> Dense(3) on 16 rows of 5 features: its variables and inputs (fixed seeds)."""
    model = nn.Sequential([nn.Dense(8), jax.nn.relu, nn.Dense(3)])
    x = np.random.default_rng(0).standard_normal((16, 5)).astype(np.float32)
    return model, model.init(jax.random.PRNGKey(0), x), x
