"""``to_torch(..., channels_last=False)``: a channels-first torch CNN that computes the Flax CNN's function."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from tree_models import Wrapped

import bridge
from bridge.torch_layers import ChannelsFirstFlatten, FlaxConv1d, FlaxConv2d


def _cnn_2d() -> nn.Sequential:
    return nn.Sequential(
        [
            nn.Conv(4, (3, 3), strides=2, padding="SAME"),
            jax.nn.relu,
            nn.Conv(3, (2, 2), padding="VALID"),
            nn.gelu,
            bridge.flatten,
            nn.Dense(5),
            jax.nn.relu,
            nn.Dense(2),
        ]
    )


def _cnn_1d() -> nn.Sequential:
    return nn.Sequential([nn.Conv(3, (3,), strides=2, padding="SAME"), jax.nn.tanh, bridge.flatten, nn.Dense(2)])


CASES = {"2d": (_cnn_2d, (4, 7, 6, 2)), "1d": (_cnn_1d, (4, 9, 2))}


def _build(name: str) -> tuple[nn.Sequential, Any, np.ndarray]:
    make, shape = CASES[name]
    model = make()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return model, model.init(jax.random.PRNGKey(3), x), x


def _channels_first(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_channels_first_model_takes_nchw_and_gives_the_flax_output(name: str) -> None:
    model, variables, x = _build(name)
    port = bridge.to_torch(model, variables, channels_last=False)
    assert all(not m.channels_last for m in port if isinstance(m, FlaxConv1d | FlaxConv2d))
    assert any(isinstance(m, ChannelsFirstFlatten) for m in port)
    with torch.no_grad():
        torch_out = port(_channels_first(x)).numpy()
    flax_out = np.asarray(model.apply(variables, x))
    np.testing.assert_allclose(torch_out, flax_out, rtol=1e-5, atol=1e-6)
    report = bridge.check_equivalence(model, variables, port, x, channels_last=False)
    assert report.ok, str(report)
    assert report.gradients  # gradients, the input's included, compare in Flax's layout


@pytest.mark.parametrize("name", list(CASES))
def test_channels_first_round_trip_is_bit_exact(name: str) -> None:
    model, variables, x = _build(name)
    back_model, back_variables = bridge.to_flax(bridge.to_torch(model, variables, channels_last=False))
    mine = jax.tree_util.tree_leaves(variables["params"])
    theirs = jax.tree_util.tree_leaves(back_variables["params"])
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(
        np.asarray(back_model.apply(back_variables, x)), np.asarray(model.apply(variables, x))
    )


def test_naive_channels_first_flatten_is_caught_at_the_linear_after_it_with_the_fix() -> None:
    """torch's own Flatten on NCHW orders the features C, H, W; a Linear holding the Flax kernel unpermuted
    reads them in H, W, C order: caught at that Linear, and the hint gives the permutation."""
    model, variables, x = _build("2d")
    port = bridge.to_torch(model, variables, channels_last=False)
    port[4] = torch.nn.Flatten()
    report = bridge.check_equivalence(model, variables, port, x, channels_last=False, grads=False)
    assert not report.ok
    assert report.first_divergence is not None
    assert report.first_divergence.index == 5
    assert report.first_divergence.hint is not None
    assert "channels_last=False" in report.first_divergence.hint
    assert ".transpose(1, 0, 2)" in report.first_divergence.hint


def _stock_torch_port() -> torch.nn.Sequential:
    """The 2-D CNN as torch users write it: stock Conv2d (explicit padding where XLA's is symmetric, F.pad
    where it is not), nn.Flatten of NCHW, and Linear layers of their own."""

    class PadThenConv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 4, 3, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(torch.nn.functional.pad(x, (0, 1, 1, 1)))  # 'SAME', stride 2, on 7x6: (1, 1), (0, 1)

    return torch.nn.Sequential(
        PadThenConv(),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 3, 2),
        torch.nn.GELU(approximate="tanh"),
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 3 * 2, 5),
        torch.nn.ReLU(),
        torch.nn.Linear(5, 2),
    ).eval()


def test_load_into_fills_a_stock_channels_first_port_and_it_passes() -> None:
    """A port in the torch way (stock Conv2d in a wrapper, nn.Flatten of NCHW): load_into permutes the
    first Linear's columns, and the checker passes it, gradients included; without the permutation
    (channels_last=True) the checker locates the Linear after the flatten."""
    model, variables, x = _build("2d")
    port = bridge.load_into(model, variables, _stock_torch_port(), channels_last=False)
    kernel = np.asarray(variables["params"]["layers_5"]["kernel"])
    expected = kernel.reshape(2 * 3, 3, 5).transpose(1, 0, 2).reshape(-1, 5).T  # DESIGN.md's formula, (H*W, C) here
    np.testing.assert_array_equal(port[5].weight.detach().numpy(), expected)
    with torch.no_grad():
        torch_out = port(_channels_first(x)).numpy()
    np.testing.assert_allclose(torch_out, np.asarray(model.apply(variables, x)), rtol=1e-4, atol=1e-5)
    report = bridge.check_equivalence(model, variables, port, x, channels_last=False)
    assert report.ok, str(report)
    assert any("0.conv.weight" in row.name for row in report.gradients)
    assert any("5.weight" in row.name for row in report.gradients)
    unpermuted = bridge.load_into(model, variables, _stock_torch_port(), channels_last=True)
    report = bridge.check_equivalence(model, variables, unpermuted, x, channels_last=False, grads=False)
    assert report.first_divergence is not None
    assert report.first_divergence.index == 5, str(report)


def test_a_channels_first_port_checked_as_channels_last_fails_to_run() -> None:
    model, variables, x = _build("2d")
    port = bridge.to_torch(model, variables, channels_last=False)
    with pytest.raises(bridge.LayerMismatchError, match=r"the torch port failed in '0' \(FlaxConv2d\)"):
        bridge.check_equivalence(model, variables, port, x)


@pytest.mark.slow
def test_sweep_of_a_channels_first_port() -> None:
    model, variables, x = _build("2d")
    port = bridge.to_torch(model, variables, channels_last=False)
    sweep = bridge.check_equivalence(model, variables, port, x, seeds=range(4), channels_last=False, grads=False)
    assert sweep.seed_ok == (True,) * 4


@pytest.mark.slow
def test_sweep_of_a_stock_channels_first_port_orders_each_seeds_linear_columns_as_its_flatten() -> None:
    """Each seed's weights reach a stock port as load_into would put them: the conv inside the user's wrapper
    by its own name (conv.weight), the Linear after nn.Flatten of NCHW with its columns permuted. Every
    seed passes, and the port keeps the weights it had."""
    model, variables, x = _build("2d")
    port = bridge.load_into(model, variables, _stock_torch_port(), channels_last=False)
    before = {k: v.clone() for k, v in port.state_dict().items()}
    sweep = bridge.check_equivalence(model, variables, port, x, seeds=range(3), channels_last=False, grads=False)
    assert sweep.seed_ok == (True,) * 3, str(sweep)
    assert all(torch.equal(before[k], v) for k, v in port.state_dict().items())


def test_layers_without_a_channels_first_form_are_refused_by_name() -> None:
    model = nn.Sequential([nn.Conv(4, (3, 3)), nn.LayerNorm(), bridge.flatten, nn.Dense(2)])
    variables = model.init(jax.random.PRNGKey(0), np.ones((1, 5, 5, 2), np.float32))
    with pytest.raises(bridge.UnsupportedModelError, match=r"layer 1 \(LayerNorm.*no channels-first torch form"):
        bridge.to_torch(model, variables, channels_last=False)
    softmax = nn.Sequential([nn.Conv(4, (3, 3)), jax.nn.softmax, bridge.flatten, nn.Dense(2)])
    with pytest.raises(bridge.UnsupportedModelError, match="softmax"):
        bridge.to_torch(
            softmax, softmax.init(jax.random.PRNGKey(0), np.ones((1, 5, 5, 2), np.float32)), channels_last=False
        )


def test_layers_after_the_flatten_are_ordinary() -> None:
    model, variables, _ = _build("2d")
    port = bridge.to_torch(model, variables, channels_last=False)
    assert [type(m) for m in port][5:] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]


def test_a_channels_first_output_reaches_the_loss_and_the_input_gradient_in_flax_layout() -> None:
    """A fully convolutional chain (its output stays NCHW in torch) under a loss that reads one channel: the
    port's output is laid out as Flax's before the loss, and the input's gradient is compared in NHWC."""
    model = nn.Sequential([nn.Conv(3, (3, 3), padding="SAME"), jax.nn.tanh, nn.Conv(2, (1, 1))])
    x = np.random.default_rng(1).standard_normal((2, 5, 4, 2)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    port = bridge.to_torch(model, variables, channels_last=False)
    report = bridge.check_equivalence(
        model, variables, port, x, channels_last=False, loss=lambda y: (y[..., 0] ** 2).sum()
    )
    assert report.ok, str(report)
    rows = {row.name: row for row in report.gradients}
    assert rows["input"].comparison.ok
    assert rows["input"].comparison.candidate_shape == x.shape  # NCHW moved back to Flax's NHWC


def test_a_wrapped_stock_port_loads_as_the_chain_does() -> None:
    """One loader, two ways to find the flatten's order: a chain's by probing its nn.Flatten before any value
    is copied, a tree's from the loaded port's recorded values; both permute the Linear's columns alike."""

    model, variables, x = _build("2d")
    as_chain = bridge.load_into(model, variables, _stock_torch_port(), channels_last=False)
    as_tree = bridge.load_into(model, variables, Wrapped(_stock_torch_port()), inputs=x, channels_last=False)
    chain_state = as_chain.state_dict()
    tree_state = {key.removeprefix("net."): value for key, value in as_tree.state_dict().items()}
    assert chain_state.keys() == tree_state.keys()
    for key, value in chain_state.items():
        assert torch.equal(value, tree_state[key]), key
    assert not torch.equal(  # the permutation was applied (the plain transposed kernel differs)
        chain_state["5.weight"], torch.from_numpy(np.asarray(variables["params"]["layers_5"]["kernel"]).T.copy())
    )
