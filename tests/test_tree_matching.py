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
    # call order pairs them swapped; the branches are fed different inputs, which re-pairs them in the load
    by_inputs = bridge.load_into(model, variables, TorchTwoBranches(), inputs=(a, b))
    assert bridge.check_equivalence(model, variables, by_inputs, (a, b), grads=False).ok
    port = bridge.load_into(model, variables, TorchTwoBranches(), inputs=(a, b), mapping={"Dense_0": "left"})
    np.testing.assert_array_equal(port.right.bias.detach().numpy(), np.asarray(variables["params"]["Dense_1"]["bias"]))
    report = bridge.check_equivalence(model, variables, port, (a, b))  # no mapping: the values decide
    assert report.ok, str(report)
    assert {("Dense_0", "left"), ("Dense_1", "right")} <= {(r.flax_path, r.torch_name) for r in report.layers}


def test_value_lookup_confirms_a_sampled_match_on_every_value() -> None:
    """Ties are looked up by a digest of a few values of each tensor, then confirmed on all of them: a module
    whose weight differs from the Flax values in one value the digest does not read is not taken for it."""
    from bridge.capture import Call
    from bridge.match._match_tree import _TorchIndex

    weight = np.random.default_rng(0).standard_normal((40, 50)).astype(np.float32)
    bias = np.zeros(40, np.float32)
    exact, almost = torch.nn.Linear(50, 40), torch.nn.Linear(50, 40)
    with torch.no_grad():
        for module in (exact, almost):
            module.weight.copy_(torch.from_numpy(weight))
            module.bias.zero_()
        almost.weight[0, 1] += 1.0  # flat index 1: between the 64 evenly spaced values the digest reads
    calls = [Call(0, "almost", "Linear", almost, None), Call(1, "exact", "Linear", exact, None)]
    index = _TorchIndex(calls)
    assert [c.name for c in index.holding({"weight": weight, "bias": bias}, calls)] == ["exact"]
