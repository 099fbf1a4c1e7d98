"""Correct ports written the way torch users write them pass; broken ones fail for the right reason.

Wrapper modules and custom parameter names (parameters found by the module that owns them, never
compared against zeros), layers with no rule that change the shape, ports that raise, and a custom
backward that is wrong while every output is right.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from models import small_mlp

import bridge


class Wrapper(torch.nn.Module):
    """A position holding the rule's module one level down (``0.inner.weight``)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class CustomDense(torch.nn.Module):
    """A Linear of its own, with its own names: ``w (out, in)`` and ``b``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(out_features, in_features))
        self.b = torch.nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.t() + self.b


class ConstantDense(torch.nn.Module):
    """A Linear whose weights are plain attributes, not parameters: no gradient can be compared."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight_value, self.bias_value = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight_value.t() + self.bias_value


class _WrongBackwardReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * (x > -0.5)  # the bug: lets gradients through below zero


class WrongBackwardReLU(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _WrongBackwardReLU.apply(x)


def test_wrapper_and_custom_names_are_loaded_and_pass_with_gradients() -> None:
    model, variables, x = small_mlp()
    port = torch.nn.Sequential(Wrapper(torch.nn.Linear(5, 8)), torch.nn.ReLU(), CustomDense(8, 3))
    bridge.load_into(model, variables, port)
    np.testing.assert_array_equal(port[2].w.detach().numpy(), np.asarray(variables["params"]["layers_2"]["kernel"]).T)
    report = bridge.check_equivalence(model, variables, port, x)
    assert report.ok, str(report)
    names = [row.name for row in report.gradients]
    assert names == [
        "input",
        "layers_0/kernel <-> 0.inner.weight",
        "layers_0/bias <-> 0.inner.bias",
        "layers_2/kernel <-> 2.w",
        "layers_2/bias <-> 2.b",
    ]


def test_a_parameter_no_port_tensor_holds_fails_its_gradient_row_instead_of_comparing_zeros() -> None:
    model, variables, x = small_mlp()
    port = bridge.to_torch(model, variables)
    port[2] = ConstantDense(port[2].weight.detach().clone(), port[2].bias.detach().clone())
    report = bridge.check_equivalence(model, variables, port, x)
    assert all(row.ok for row in report.layers), str(report)  # outputs match
    assert not report.ok
    missing = [row for row in report.gradients if "no tensor of torch 2 holds it" in row.name]
    assert [row.name.split(" ")[0] for row in missing] == ["layers_2/kernel", "layers_2/bias"]
    assert all(not row.comparison.ok for row in missing)
    flat = bridge.check_equivalence(model, variables, port, x, loss=lambda y: (y * 0.0).sum())
    assert not flat.ok, "a zero gradient must not pass for a parameter no tensor holds"


def test_load_into_lists_what_it_cannot_place() -> None:
    model, variables, _ = small_mlp()

    class TwoWeights(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = torch.nn.Parameter(torch.zeros(3, 8))
            self.second = torch.nn.Parameter(torch.zeros(3, 8))
            self.b = torch.nn.Parameter(torch.zeros(3))

    port = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), TwoWeights())
    with pytest.raises(
        bridge.LayerMismatchError,
        match=r"Flax layers_2 -> torch 2: torch has no weight.*Flax layers_2 -> torch 2: torch tensors no Flax variable "
        r"fills: first, second",
    ):
        bridge.load_into(model, variables, port)


def test_a_wrong_custom_backward_is_caught_in_the_gradients() -> None:
    """Every output agrees; only the torch gradient differs (a mutant that compared Flax's gradients with
    themselves would pass this port)."""
    model, variables, x = small_mlp()
    port = bridge.to_torch(model, variables)
    port[1] = WrongBackwardReLU()
    report = bridge.check_equivalence(model, variables, port, x)
    assert all(row.ok for row in report.layers), str(report)
    assert not report.ok
    assert report.first_divergence is not None
    assert report.first_divergence.mode == "gradient"
    assert "check custom backward code" in str(report.first_divergence.hint)
    bad = [row.name for row in report.gradients if not row.comparison.ok]
    assert "layers_0/kernel <-> 0.weight" in bad


def test_a_layer_without_a_rule_that_changes_the_shape_is_checked() -> None:
    model = nn.Sequential([nn.Dense(8), lambda x: x[:, :3], nn.Dense(2)])
    x = np.random.default_rng(1).standard_normal((16, 5)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)

    class Slice(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :3]

    port = torch.nn.Sequential(torch.nn.Linear(5, 8), Slice(), torch.nn.Linear(3, 2))
    with torch.no_grad():  # load_into needs a rule for every layer: filled by hand
        for position, name in ((0, "layers_0"), (2, "layers_2")):
            port[position].weight.copy_(torch.from_numpy(np.array(variables["params"][name]["kernel"]).T))
            port[position].bias.copy_(torch.from_numpy(np.array(variables["params"][name]["bias"])))
    assert bridge.check_equivalence(model, variables, port, x).ok
    port[1] = torch.nn.Identity()  # the shape no longer fits the next layer
    with pytest.raises(
        bridge.LayerMismatchError, match=r"the torch port failed in '2' \(Linear\) on its input of shape \(16, 8\)"
    ):
        bridge.check_equivalence(model, variables, port, x)


def test_a_port_layer_that_raises_any_exception_becomes_a_bridge_error() -> None:
    model, variables, x = small_mlp()

    class Raises(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("boom")

    port = bridge.to_torch(model, variables)
    port[1] = Raises()
    with pytest.raises(bridge.LayerMismatchError, match=r"the torch port failed in '1' \(Raises\) .*: boom"):
        bridge.check_equivalence(model, variables, port, x)


class ResidualMLP(nn.Module):
    """A tree (a skip around two Dense layers), not one chain."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = nn.relu(nn.Dense(8)(x))
        return x + nn.Dense(5)(hidden)


class TorchResidualMLP(torch.nn.Module):
    """Its port with its own names, the second layer a module of its own (``out.w``, ``out.b``)."""

    def __init__(self, relu: torch.nn.Module) -> None:
        super().__init__()
        self.fc, self.act, self.out = torch.nn.Linear(5, 8), relu, CustomDense(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(self.act(self.fc(x)))


@pytest.mark.parametrize("relu", [torch.nn.ReLU(), WrongBackwardReLU()], ids=["correct", "wrong backward"])
def test_tree_gradients_reach_parameters_under_their_own_names(relu: torch.nn.Module) -> None:
    """The tree's gradient rows find the custom module's ``w``/``b`` (a mutant skipping tensors not under the
    rule's names would pass the wrong backward: the gradient it breaks is ``fc``'s, read through ``out.w``)."""
    x = np.random.default_rng(3).standard_normal((16, 5)).astype(np.float32)
    model = ResidualMLP()
    variables = model.init(jax.random.PRNGKey(0), x)
    port = bridge.load_into(model, variables, TorchResidualMLP(relu), inputs=x)
    report = bridge.check_equivalence(model, variables, port, x)
    names = [row.name for row in report.gradients]
    assert names == [
        "input",  # one floating input fed to both sides: its gradient too, as a chain's
        "Dense_0/kernel <-> fc.weight",
        "Dense_0/bias <-> fc.bias",
        "Dense_1/kernel <-> out.w",
        "Dense_1/bias <-> out.b",
    ], names
    assert all(row.ok for row in report.layers), str(report)
    if isinstance(relu, torch.nn.ReLU):
        assert report.ok, str(report)
        return
    assert not report.ok
    assert report.first_divergence is not None
    assert report.first_divergence.mode == "gradient"
    assert (report.first_divergence.flax_path, report.first_divergence.torch_name) == ("Dense_0", "fc")
    assert "check custom backward code" in str(report.first_divergence.hint)
    failing = [row.name for row in report.gradients if not row.comparison.ok]
    assert "Dense_0/kernel <-> fc.weight" in failing, failing
