"""One verdict, one report: a model that is both a chain and a tree (an ``nn.Sequential`` against a torch
``Sequential``, checked position by position, and the same port wrapped in a module, checked as call trees)
gets the same verdict, the same first divergence and rows in the same format from both paths."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import sequential_mlp
from tree_models import Wrapped

import bridge


def _scale_weight(port: torch.nn.Sequential) -> None:
    with torch.no_grad():
        port[2].weight.mul_(1.01)


def _shift_bias(port: torch.nn.Sequential) -> None:
    with torch.no_grad():
        port[4].bias.add_(1e-3)


def _transpose_square_kernel(port: torch.nn.Sequential) -> None:
    with torch.no_grad():
        port[2].weight.copy_(port[2].weight.T.clone())


MISTAKES: dict[str, Callable[[torch.nn.Sequential], None] | None] = {
    "correct": None,
    "scaled weight": _scale_weight,
    "shifted bias": _shift_bias,
    "untransposed square kernel": _transpose_square_kernel,
}


def _flax_half(name: str) -> str:
    return name.split(" <-> ")[0]


@pytest.mark.parametrize("mistake", list(MISTAKES), ids=list(MISTAKES))
def test_a_chain_and_its_wrapped_port_get_the_same_verdict_and_report(mistake: str) -> None:
    model = sequential_mlp(8, 3)
    x = np.random.default_rng(1).normal(size=(16, 5)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    port = bridge.to_torch(model, variables)
    plant = MISTAKES[mistake]
    if plant is not None:
        plant(port)

    as_chain = bridge.check_equivalence(model, variables, port, x)
    as_tree = bridge.check_equivalence(model, variables, Wrapped(port), x)

    assert as_chain.ok is as_tree.ok is (plant is None)
    assert as_chain.settings.keys() == as_tree.settings.keys()  # one set of settings, one report format
    same = (
        "dtype",
        "tolerance",
        "inputs",
        "grads",
        "gradient_rows_dropped_nonfinite",
        "gradient_rows_dropped_at_kinks",
    )
    for key in (*same, "nonfinite_outputs", "tied", "unchecked_torch", "unpaired_flax_variables", "loose_variables"):
        assert as_chain.settings[key] == as_tree.settings[key], key
    assert str(as_chain).splitlines()[:2] == str(as_tree).splitlines()[:2]  # verdict and settings lines
    # the Dense layers: the same comparison (same tolerance rule, same numbers) and verdict on both paths
    chain_dense = [r for r in as_chain.layers if r.kind == "Dense"]
    tree_dense = [r for r in as_tree.layers if r.kind == "Dense"]
    assert (
        [r.flax_path for r in chain_dense] == [r.flax_path for r in tree_dense] == ["layers_0", "layers_2", "layers_4"]
    )
    for c, t in zip(chain_dense, tree_dense, strict=True):
        assert c.isolated is not None
        assert t.isolated is not None
        assert c.isolated.ok is t.isolated.ok, c.flax_path
        assert c.isolated.max_abs == t.isolated.max_abs, c.flax_path
    # the tolerance method is chosen per call, not per pairing: the positions of the Sequential the model opens
    # with get their rules' bounds propagated on both paths (the same tolerances, to the bit)
    assert [r.end_to_end for r in chain_dense] == [r.end_to_end for r in tree_dense]
    assert as_chain.output == as_tree.output
    # the same gradients, input first, each with the same verdict
    assert [_flax_half(g.name) for g in as_chain.gradients] == [_flax_half(g.name) for g in as_tree.gradients]
    assert [g.comparison.ok for g in as_chain.gradients] == [g.comparison.ok for g in as_tree.gradients]
    assert as_chain.gradients[0].name == as_tree.gradients[0].name == "input"
    if plant is None:
        assert as_chain.first_divergence is None
        assert as_tree.first_divergence is None
    else:
        first_chain, first_tree = as_chain.first_divergence, as_tree.first_divergence
        assert first_chain is not None
        assert first_tree is not None
        assert (first_chain.flax_path, first_chain.kind) == (first_tree.flax_path, first_tree.kind)
        assert first_tree.torch_name == "net." + first_chain.torch_name
        assert first_chain.hint == first_tree.hint


class _OpensWithAChain(nn.Module):
    """A tree whose first call is a chain (an ``nn.Sequential`` fed the input) and whose own code follows it."""

    def setup(self) -> None:
        self.net = sequential_mlp(8, 3)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.net(x) * 2.0


class _TorchOpensWithAChain(torch.nn.Module):
    def __init__(self, net: torch.nn.Sequential) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 2.0


@pytest.mark.parametrize("mistake", list(MISTAKES), ids=list(MISTAKES))
def test_a_trees_opening_chain_is_judged_by_propagated_bounds_and_the_rest_by_calibration(mistake: str) -> None:
    """Per call: inside a tree, the positions of the chain it opens with get the same rows as that chain checked
    alone (its rules' bounds propagated); the output, which the tree's own code computes, is judged as a tree's."""
    x = np.random.default_rng(1).normal(size=(16, 5)).astype(np.float32)
    model = _OpensWithAChain()
    variables = model.init(jax.random.PRNGKey(0), x)
    chain_variables = {"params": variables["params"]["net"]}
    port = bridge.to_torch(sequential_mlp(8, 3), chain_variables)
    plant = MISTAKES[mistake]
    if plant is not None:
        plant(port)
    tree = bridge.check_equivalence(model, variables, _TorchOpensWithAChain(port), x, grads=False)
    chain = bridge.check_equivalence(sequential_mlp(8, 3), chain_variables, port, x, grads=False)
    assert tree.ok is chain.ok is (plant is None)
    positions = [r for r in tree.layers if r.kind == "Dense"]
    assert [r.flax_path for r in positions] == [
        "net/layers_0",
        "net/layers_2",
        "net/layers_4",
    ]
    chain_dense = [r for r in chain.layers if r.kind == "Dense"]
    assert [(r.end_to_end, r.isolated) for r in positions] == [(r.end_to_end, r.isolated) for r in chain_dense]
    # the output is twice the chain's: judged by a tolerance of its own (a few roundings, calibrated if needed),
    # not the last position's propagated bound
    assert tree.output.tolerance_at_worst != chain.output.tolerance_at_worst


@pytest.mark.parametrize("mistake", list(MISTAKES), ids=list(MISTAKES))
def test_the_nnx_form_gets_the_verdict_of_the_linen_form_as_a_chain_and_as_a_tree(mistake: str) -> None:
    """The same model written in NNX (``to_nnx`` of the correct port: the same weights), checked against the
    same planted port as a chain and wrapped as a tree: every form finds the same verdict, at the same torch
    module, diagnosed alike."""
    model = sequential_mlp(8, 3)
    x = np.random.default_rng(1).normal(size=(16, 5)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    port = bridge.to_torch(model, variables)
    nnx_model = bridge.to_nnx(port)
    plant = MISTAKES[mistake]
    if plant is not None:
        plant(port)
    reports = {
        "linen chain": bridge.check_equivalence(model, variables, port, x),
        "linen tree": bridge.check_equivalence(model, variables, Wrapped(port), x),
        "nnx chain": bridge.check_equivalence(nnx_model, None, port, x),
        "nnx tree": bridge.check_equivalence(nnx_model, None, Wrapped(port), x),
    }
    for form, report in reports.items():
        assert report.ok is (plant is None), f"{form}:\n{report}"
        first = report.first_divergence
        reference = reports["linen chain"].first_divergence
        if reference is None:
            assert first is None, form
            continue
        assert first is not None, form
        # the same torch module, diagnosed alike (NNX names its layer Linear and its path layers/2: not compared)
        assert (first.torch_name.removeprefix("net."), first.mode, first.hint) == (
            reference.torch_name,
            reference.mode,
            reference.hint,
        ), form


def test_inputs_drawn_for_a_chain_are_described_alike_on_both_paths() -> None:
    model = sequential_mlp(8, 3)
    variables = model.init(jax.random.PRNGKey(0), np.ones((1, 5), np.float32))
    port = bridge.to_torch(model, variables)
    as_chain = bridge.check_equivalence(model, variables, port, seed=3, n_inputs=7)
    as_tree = bridge.check_equivalence(model, variables, Wrapped(port), seed=3, n_inputs=7)
    assert as_chain.settings["inputs"] == as_tree.settings["inputs"] == "shape (7, 5), normal(seed=3)"
    assert as_chain.ok
    assert as_tree.ok


def _state(port: torch.nn.Module) -> dict[str, np.ndarray]:
    return {key: value.detach().numpy() for key, value in port.state_dict().items()}


def test_a_chain_and_its_wrapped_port_load_alike() -> None:
    """One loader: a chain's positions (paired without running) and the wrapped port's matched calls (found by
    running both) take the same tensors, the converter's."""
    model = sequential_mlp(8, 3)
    x = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    other = model.init(jax.random.PRNGKey(1), x)
    chain_port, tree_port = bridge.to_torch(model, other), bridge.to_torch(model, other)
    bridge.load_into(model, variables, chain_port)
    bridge.load_into(model, variables, Wrapped(tree_port), inputs=x)
    expected = {key: value.numpy() for key, value in bridge.to_state_dict(model, variables).items()}
    for loaded in (_state(chain_port), _state(tree_port)):
        assert loaded.keys() == expected.keys()
        for key, value in expected.items():
            np.testing.assert_array_equal(loaded[key], value, err_msg=key)


class _Amplify(nn.Module):
    """A layer of the user's own with no rule that holds a parameter: ``sin(gain * x)`` with a learned gain of
    1000, which multiplies its input's error by up to 1000 and keeps its output within [-1, 1]."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.sin(x * self.param("gain", nn.initializers.constant(1000.0), (x.shape[-1],)))


class _TorchAmplify(torch.nn.Module):
    def __init__(self, gain: np.ndarray) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(np.asarray(gain)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x * self.gain)


@pytest.mark.parametrize("mistake", ["correct", "shifted bias"])
def test_a_chain_position_holding_variables_without_a_rule_hands_the_calls_after_it_to_the_calibration(
    mistake: str,
) -> None:
    """No rule bounds what such a layer does to its input's error (here: up to 1000 times it): the positions
    before it keep their propagated bounds, it and every call after it are judged by the float64 calibration,
    which passes the correct port and still finds a shifted bias after it."""
    model = nn.Sequential([nn.Dense(8), _Amplify(), jax.nn.relu, nn.Dense(3)])
    x = np.random.default_rng(1).normal(size=(16, 5)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    params = variables["params"]
    port = torch.nn.Sequential(
        torch.nn.Linear(5, 8), _TorchAmplify(params["layers_1"]["gain"]), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    )
    with torch.no_grad():
        for position, name in ((0, "layers_0"), (3, "layers_3")):
            port[position].weight.copy_(torch.tensor(np.asarray(params[name]["kernel"]).T))
            port[position].bias.copy_(torch.tensor(np.asarray(params[name]["bias"])))
        if mistake == "shifted bias":
            port[3].bias.add_(1.0)
    report = bridge.check_equivalence(model, variables, port, x, allow_unchecked=True)
    assert report.ok is (mistake == "correct"), str(report)
    alone = bridge.check_equivalence(
        nn.Sequential([nn.Dense(8)]), {"params": {"layers_0": params["layers_0"]}}, port[:1], x
    )
    assert report.layers[0].end_to_end == alone.layers[0].end_to_end  # before it: the chain's propagated bound
    if mistake != "correct":
        first = report.first_divergence
        assert first is not None
        assert (first.flax_path, first.mode) == ("layers_3", "isolated")
