"""Matching details: equal signatures are paired by the values a loaded port holds before call order, and
the composite that covers matched leaves is their lowest common ancestor in the port."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import torch

import bridge


class TwoBranches(nn.Module):
    @nn.compact
    def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
        return nn.Dense(4)(a) + nn.Dense(4)(b)  # Dense_0 reads a, Dense_1 reads b


class TorchTwoBranches(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        right = self.right(b)  # the branches run in the other order
        return self.left(a) + right


def test_equal_signatures_pair_by_the_values_a_loaded_port_holds() -> None:
    rng = np.random.default_rng(7)
    a, b = (rng.standard_normal((3, 4)).astype(np.float32) for _ in range(2))
    model = TwoBranches()
    variables = model.init(jax.random.PRNGKey(0), a, b)
    by_order = bridge.load_into(TorchTwoBranches(), model, variables, inputs=(a, b))  # call order: swapped
    assert not bridge.check_equivalence(model, variables, by_order, (a, b), grads=False).ok
    port = bridge.load_into(TorchTwoBranches(), model, variables, inputs=(a, b), mapping={"Dense_0": "left"})
    np.testing.assert_array_equal(port.right.bias.detach().numpy(), np.asarray(variables["params"]["Dense_1"]["bias"]))
    report = bridge.check_equivalence(model, variables, port, (a, b))  # no mapping: the values decide
    assert report.ok, str(report)
    assert {("Dense_0", "left"), ("Dense_1", "right")} <= {(r.flax_path, r.torch_name) for r in report.layers}
