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
