"""Conversion both ways: keys, transposition, bit-exact round trips, load_into checks, and every error."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from conftest import SetupMLP, init, sequential_mlp
from models import assert_matches_flax

import bridge
import flax_impl
import torch_impl


def _seed_model(in_features: int = 3, hidden: int = 4, out: int = 2, seed: int = 0) -> tuple[nn.Module, Any]:
    model = flax_impl.SeqMLP(hidden, out)
    return model, init(model, in_features, seed)


def _leaves_in_order(variables: Any) -> list[np.ndarray]:
    """Param leaves in chain order (Flax sorts Dense_10 before Dense_2, so sort by the layer's number)."""
    params = variables["params"]
    names = sorted(params, key=lambda name: int(name.rsplit("_", 1)[1]))
    return [np.asarray(params[name][leaf]) for name in names for leaf in sorted(params[name])]


def test_state_dict_keys_and_shapes_follow_torch_positions() -> None:
    model, variables = _seed_model(in_features=3, hidden=5, out=2)
    state = bridge.to_state_dict(model, variables)
    assert {key: tuple(value.shape) for key, value in state.items()} == {
        "0.weight": (5, 3),
        "0.bias": (5,),
        "2.weight": (5, 5),
        "2.bias": (5,),
        "4.weight": (2, 5),
        "4.bias": (2,),
    }
    assert state.keys() == torch_impl.SeqMLP(3, 5, 2).state_dict().keys()


def test_kernel_is_transposed_into_the_weight() -> None:
    model, variables = _seed_model(in_features=3, hidden=5, out=2)
    state = bridge.to_state_dict(model, variables)
    kernel = np.asarray(variables["params"]["Dense_0"]["kernel"])  # (in=3, out=5): non-square
    np.testing.assert_array_equal(state["0.weight"].numpy(), kernel.T)
    x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    linear = bridge.to_torch(model, variables)[0]
    single = nn.Sequential([nn.Dense(5)])
    single_variables = {"params": {"layers_0": variables["params"]["Dense_0"]}}
    assert_matches_flax(single, single_variables, x, linear(torch.from_numpy(x)))
    assert_matches_flax(single, single_variables, x, x @ kernel + np.asarray(variables["params"]["Dense_0"]["bias"]))


def test_converted_tensors_are_copies_and_the_input_is_not_modified() -> None:
    model, variables = _seed_model()
    before = jax.tree_util.tree_map(np.array, variables)
    state = bridge.to_state_dict(model, variables)
    state["0.bias"].add_(1.0)
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, before)


@pytest.mark.parametrize(
    "make_model", [lambda: flax_impl.SeqMLP(6, 3), lambda: SetupMLP(6, 3), lambda: sequential_mlp(6, 3)],
    ids=["compact", "setup", "sequential-as-model"],
)  # fmt: skip
def test_every_layout_converts_and_matches(make_model: Any, rng: np.random.Generator) -> None:
    model = make_model()
    variables = init(model, 5, seed=3)
    x = rng.normal(size=(16, 5)).astype(np.float32)
    assert_matches_flax(model, variables, x, bridge.to_torch(model, variables)(torch.from_numpy(x)))


def test_round_trip_flax_torch_flax_is_bit_exact(rng: np.random.Generator) -> None:
    model, variables = _seed_model(in_features=5, hidden=7, out=3, seed=11)
    back_model, back_variables = bridge.to_flax(bridge.to_torch(model, variables))
    assert list(back_variables["params"]) == ["layers_0", "layers_2", "layers_4"]
    for original, returned in zip(_leaves_in_order(variables), _leaves_in_order(back_variables), strict=True):
        assert original.dtype == returned.dtype
        np.testing.assert_array_equal(original, returned)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(back_model.apply(back_variables, x)), np.asarray(model.apply(variables, x))
    )


def test_round_trip_torch_flax_torch_is_bit_exact() -> None:
    torch.manual_seed(0)
    original = torch_impl.SeqMLP(4, 6, 2)
    again = bridge.to_torch(*bridge.to_flax(original))
    for key, value in original.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_use_bias_false_maps_to_linear_without_bias(rng: np.random.Generator) -> None:
    model = nn.Sequential([nn.Dense(4, use_bias=False), jax.nn.relu, nn.Dense(2)])
    variables = init(model, 3)
    converted = bridge.to_torch(model, variables)
    assert converted[0].bias is None
    assert set(converted.state_dict()) == {"0.weight", "2.weight", "2.bias"}
    x = rng.normal(size=(3, 3)).astype(np.float32)
    assert_matches_flax(model, variables, x, converted(torch.from_numpy(x)))
    back_model, back_variables = bridge.to_flax(converted)
    assert back_model.layers[0].use_bias is False
    assert set(back_variables["params"]["layers_0"]) == {"kernel"}


def test_float64_round_trip_refuses_a_silent_downcast() -> None:
    torch_module = torch.nn.Sequential(torch.nn.Linear(3, 2, dtype=torch.float64))
    with pytest.raises(bridge.LayerMismatchError, match=r"layer 0 \(torch Linear at '0'\) weight: JAX would store"):
        bridge.to_flax(torch_module)


def test_load_into_loads_the_twin_and_returns_it(rng: np.random.Generator) -> None:
    model, variables = _seed_model(in_features=3, hidden=4, out=2, seed=5)
    twin = torch_impl.SeqMLP(3, 4, 2)
    assert bridge.load_into(model, variables, twin) is twin
    x = rng.normal(size=(9, 3)).astype(np.float32)
    assert_matches_flax(model, variables, x, twin(torch.from_numpy(x)))


def test_load_into_catches_an_untransposed_square_kernel_by_values_not_shapes() -> None:
    """A square kernel fits the weight's shape untransposed: the bridge transposes, so values differ from .T."""
    model, variables = _seed_model(in_features=4, hidden=4, out=4)
    twin = bridge.load_into(model, variables, torch_impl.SeqMLP(4, 4, 4))
    kernel = np.asarray(variables["params"]["Dense_1"]["kernel"])
    np.testing.assert_array_equal(twin[2].weight.detach().numpy(), kernel.T)
    assert not np.array_equal(kernel, kernel.T)


@pytest.mark.parametrize(
    ("torch_module", "match"),
    [
        (torch_impl.SeqMLP(3, 5, 2), r"Flax Dense_0 -> torch 0: bias has shape \(5,\) in torch, Flax gives \(4,\)"),
        (torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()), "the Flax chain has 5 layers .* torch Sequential has 2"),
        (
            torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)),
            r"Flax relu -> torch 1: expected torch ReLU, found Tanh",
        ),
        (
            torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), torch.nn.ReLU(), torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)),
            r"Flax Dense_0 -> torch 0: torch has no bias \(its tensors: weight\)",
        ),
        (torch_impl.SeqMLP(3, 4, 2, dtype=torch.float64), r"Flax Dense_0 -> torch 0: weight is torch.float64 in torch, Flax gives float32"),
        (torch.nn.Linear(3, 4), r"cannot load into the torch module: Flax Dense_1 \(Dense\) has no torch counterpart"),
    ],
    ids=["shape", "length", "kind", "missing-bias", "dtype", "not-sequential"],
)  # fmt: skip
def test_load_into_refuses_a_mismatched_module_and_leaves_it_untouched(
    torch_module: torch.nn.Module, match: str
) -> None:
    model, variables = _seed_model()
    before = {key: value.clone() for key, value in torch_module.state_dict().items()}
    with pytest.raises(bridge.LayerMismatchError, match=match):
        bridge.load_into(model, variables, torch_module)
    for key, value in torch_module.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_unknown_flax_layer_is_named_with_its_position() -> None:
    model = nn.Sequential([nn.Dense(4), lambda x: 2 * x])
    with pytest.raises(
        bridge.UnknownLayerError, match=r"layer 1 \(<lambda>\): no conversion rule for <lambda>.*register_rule"
    ):
        bridge.to_torch(model, init(model, 3))


def test_unknown_torch_layer_is_named_with_its_position() -> None:
    with pytest.raises(bridge.UnknownLayerError, match=r"layer 1 \(torch Softsign at '1'\): no conversion rule"):
        bridge.to_flax(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Softsign()))


def test_to_flax_refuses_a_non_sequential() -> None:
    with pytest.raises(bridge.UnsupportedModelError, match=r"converts a torch\.nn\.Sequential, got Linear"):
        bridge.to_flax(torch.nn.Linear(3, 4))


def test_mis_shaped_or_misnamed_variables_are_named() -> None:
    model, variables = _seed_model()
    bad = jax.tree_util.tree_map(lambda a: a, variables)
    bad["params"]["Dense_1"]["kernal"] = bad["params"]["Dense_1"].pop("kernel")
    with pytest.raises(
        bridge.LayerMismatchError,
        match=r"layer 2 \(Dense at 'Dense_1'\): missing in variables: params/kernel; unexpected in variables .*params/kernal",
    ):
        bridge.to_torch(model, bad)


def test_registering_a_kind_twice_raises() -> None:
    class AnotherDense(bridge.LayerRule):
        kind = "Dense"
        flax_keys = (nn.Dense,)
        torch_types = ()

    with pytest.raises(bridge.RuleRegistrationError, match=r"nn\.Dense already has the rule DenseRule"):
        bridge.register_rule(AnotherDense)


class Sin(torch.nn.Module):
    """A user's own torch layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


def test_a_user_rule_converts_a_new_kind_both_ways(rng: np.random.Generator) -> None:
    class SinRule(bridge.LayerRule):
        kind = "sin"
        flax_keys = (jax.numpy.sin,)
        torch_types = (Sin,)

        def make_torch(self, layer: Any, variables: Any) -> torch.nn.Module:
            return Sin()

        def make_flax(self, module: torch.nn.Module) -> Any:
            return jax.numpy.sin

    bridge.register_rule(SinRule)
    try:
        model = nn.Sequential([nn.Dense(4), jax.numpy.sin, nn.Dense(2)])
        variables = init(model, 3)
        converted = bridge.to_torch(model, variables)
        assert isinstance(converted[1], Sin)
        x = rng.normal(size=(5, 3)).astype(np.float32)
        np.testing.assert_allclose(
            converted(torch.from_numpy(x)).detach().numpy(), model.apply(variables, x), rtol=1e-5
        )
        back_model, _ = bridge.to_flax(converted)
        assert back_model.layers[1] is jax.numpy.sin
        assert bridge.check_equivalence(model, variables, converted).ok
    finally:
        bridge.rules.unregister(SinRule)
    with pytest.raises(bridge.UnknownLayerError, match="no conversion rule for sin"):
        bridge.to_torch(model, variables)


class ScaledSin(torch.nn.Module):
    """A user's own torch layer holding a parameter its rule forgets to lay out."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.empty(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.sin(x)


def test_a_user_rule_whose_torch_module_holds_a_tensor_it_never_fills_is_refused_by_layer() -> None:
    """A rule's module with a tensor no variable fills would hold ``torch.empty``'s garbage: refused, named."""

    class ForgetfulRule(bridge.LayerRule):
        kind = "scaled sin"
        flax_keys = (jax.numpy.sin,)
        torch_types = (ScaledSin,)

        def make_torch(self, layer: Any, variables: Any) -> torch.nn.Module:
            return ScaledSin()

    bridge.register_rule(ForgetfulRule)
    try:
        model = nn.Sequential([nn.Dense(4), jax.numpy.sin, nn.Dense(2)])
        with pytest.raises(
            bridge.LayerMismatchError, match=r"layer 1 \(sin\): the scaled sin rule left \['scale'\] unfilled"
        ):
            bridge.to_torch(model, init(model, 3))
    finally:
        bridge.rules.unregister(ForgetfulRule)
