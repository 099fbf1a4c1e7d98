"""Kinks: where a relu's input lies at (or within rounding of) 0, a correct port may take the other
branch or another convention (``clamp(min=0)`` passes the gradient at 0, ``relu`` does not), so its gradients
may differ there. Such input rows are left out of the gradient comparison once it fails with them (chains and trees
alike), and a real gradient mistake is still caught on the other rows."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from tree_models import ClampedPort, ReluMLP

import bridge
from bridge._jaxpr import kinks


@pytest.fixture(scope="module")
def padded() -> tuple[nn.Module, object, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    x[3] = 0.0  # a padding row: with zero biases, every relu input of that row is exactly 0
    model = ReluMLP()
    return model, model.init(jax.random.PRNGKey(0), x), x


def test_a_padding_row_at_the_relu_kink_is_left_out_of_the_gradients(padded: tuple) -> None:
    model, variables, x = padded
    port = bridge.load_into(model, variables, ClampedPort(), inputs=x)
    report = bridge.check_equivalence(model, variables, port, x)
    assert report.ok, str(report)
    assert report.settings["gradient_rows_dropped_at_kinks"] == 1
    assert "1 near a kink" in str(report)
    judged = bridge.check_equivalence(model, variables, port, np.delete(x, 3, axis=0))
    assert judged.ok
    assert judged.settings["gradient_rows_dropped_at_kinks"] == 0


def test_a_wrong_custom_backward_is_still_caught_on_the_rows_away_from_kinks(padded: tuple) -> None:
    model, variables, x = padded
    port = bridge.load_into(model, variables, ClampedPort(doubled_backward=True), inputs=x)
    report = bridge.check_equivalence(model, variables, port, x)
    assert not report.ok
    assert report.layers
    assert all(row.ok for row in report.layers)
    failing = {row.name.split(" <-> ")[0] for row in report.gradients if not row.comparison.ok}
    # the inner Dense(16) (the outer is built first), and the input's, which flows back through the same backward
    assert failing == {"input", "Dense_1/kernel", "Dense_1/bias"}, str(report)
    assert report.first_divergence is not None
    assert "check custom backward code" in str(report.first_divergence.hint)


def test_kinks_are_found_inside_jitted_and_custom_derivative_calls() -> None:
    def function(x: jax.Array) -> jax.Array:
        return nn.relu(x) + nn.leaky_relu(x) + jnp.clip(x, -1.0, 2.0) + jnp.abs(x) + jnp.tanh(x)

    x = jnp.asarray([-3.0, -0.5, 0.0, 0.5, 3.0], jnp.float32)
    found = kinks(function, x)
    assert sorted(kink.at for kink in found) == [-1.0, 0.0, 0.0, 0.0, 2.0]  # clip's two, relu, leaky_relu, abs
    for kink in found:  # clip's upper bound meets what its lower bound let through
        np.testing.assert_array_equal(kink.input, np.maximum(np.asarray(x), -1.0) if kink.at == 2.0 else np.asarray(x))
    assert kinks(lambda v: jnp.tanh(v) * 2.0 + jnp.exp(v), x) == []  # smooth functions meet none


class _Clamp(torch.nn.Module):
    """relu as ``clamp(min=0)``: the same outputs, but the gradient at 0 passes (relu's is 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)


def test_a_chain_leaves_out_a_row_at_a_kink_only_once_its_gradients_fail_with_it() -> None:
    """Chains and trees alike: a row whose relu input is 0 (a zero row, zero biases) is judged while the
    gradients pass with it (the converter's own port), and left out only when they fail with it (a port
    whose relu passes the gradient at 0); a real mistake is still caught on the other rows."""
    model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
    x = np.random.default_rng(1).standard_normal((6, 3)).astype(np.float32)
    x[2] = 0.0
    variables = model.init(jax.random.PRNGKey(0), x)
    exact = bridge.to_torch(model, variables)
    report = bridge.check_equivalence(model, variables, exact, x)
    assert report.ok, str(report)
    assert report.settings["gradient_rows_dropped_at_kinks"] == 0
    clamped = torch.nn.Sequential(exact[0], _Clamp(), exact[2])
    report = bridge.check_equivalence(model, variables, clamped, x)
    assert report.ok, str(report)
    assert report.settings["gradient_rows_dropped_at_kinks"] == 1
    assert "1 near a kink" in str(report)
    doubled = torch.nn.Sequential(exact[0], _Clamp(), _DoubledBackward(exact[2]))
    report = bridge.check_equivalence(model, variables, doubled, x)
    assert not report.ok
    assert all(row.ok for row in report.layers)
    assert report.settings["gradient_rows_dropped_at_kinks"] == 1
    assert not all(g.comparison.ok for g in report.gradients)


class _DoubledBackward(torch.nn.Module):
    """A Linear whose forward is right and whose backward doubles every gradient (a wrong custom backward)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return 2 * y - y.detach()
