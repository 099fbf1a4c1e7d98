"""Flax NNX as a source: the same API takes an nnx.Sequential (no variables argument)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import bridge
import torch_impl
from bridge.capture import discover_chain


def _mlp() -> nnx.Sequential:
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(
        nnx.Linear(6, 16, rngs=rngs),
        nnx.LayerNorm(16, rngs=rngs),
        nnx.gelu,
        nnx.Dropout(0.1, rngs=rngs),
        nnx.Linear(16, 16, rngs=rngs),
        nnx.BatchNorm(16, rngs=rngs),
        nnx.relu,
        nnx.Linear(16, 4, rngs=rngs),
    )
    # non-trivial statistics and affine parameters, so that a wrong mapping shows
    rng = np.random.default_rng(0)
    for module in (model.layers[1], model.layers[5]):
        module.scale[...] = module.scale[...] + 0.3 * rng.standard_normal(16).astype(np.float32)
        module.bias[...] = module.bias[...] + 0.3 * rng.standard_normal(16).astype(np.float32)
    model.layers[5].mean[...] = 0.5 * rng.standard_normal(16).astype(np.float32)
    model.layers[5].var[...] = (1.0 + rng.random(16)).astype(np.float32)
    return model


def _cnn() -> nnx.Sequential:
    rngs = nnx.Rngs(1)
    return nnx.Sequential(
        nnx.Conv(3, 4, (3, 3), strides=2, padding="SAME", rngs=rngs),
        nnx.relu,
        nnx.Conv(4, 8, (3, 3), padding="VALID", rngs=rngs),
        nnx.relu,
        bridge.flatten,
        nnx.Linear(8 * 3 * 3, 5, rngs=rngs),
    )


def test_chain_of_an_nnx_sequential() -> None:
    steps = discover_chain(_mlp())
    assert [s.kind for s in steps] == [
        "Linear",
        "LayerNorm",
        "gelu",
        "Dropout",
        "Linear",
        "BatchNorm",
        "relu",
        "Linear",
    ]
    assert steps[0].flax_path == ("layers", "0")
    assert set(steps[5].variables) == {"params", "batch_stats"}
    assert steps[5].variables["batch_stats"]["var"].shape == (16,)


def test_mlp_converts_and_passes_the_checker_in_eval_mode() -> None:
    model = _mlp()
    port = bridge.to_torch(model)
    assert [type(m).__name__ for m in port] == [
        "Linear",
        "LayerNorm",
        "GELU",
        "Dropout",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
    ]
    model.eval()
    report = bridge.check_equivalence(model, None, port)
    assert report.ok, str(report)
    assert any(g.name == "layers/5/scale <-> 5.weight" for g in report.gradients)


def test_cnn_converts_and_passes_the_checker() -> None:
    model = _cnn()
    x = np.random.default_rng(0).normal(size=(4, 9, 9, 3)).astype(np.float32)
    report = bridge.check_equivalence(model, None, bridge.to_torch(model), x)
    assert report.ok, str(report)


def test_nnx_to_torch_to_linen_keeps_every_weight_bit_for_bit() -> None:
    model = _mlp()
    linen_model, variables = bridge.to_flax(bridge.to_torch(model))
    for nnx_step, linen_step in zip(discover_chain(model), discover_chain(linen_model, variables), strict=True):
        for collection, arrays in nnx_step.variables.items():
            for name, array in arrays.items():
                np.testing.assert_array_equal(np.asarray(linen_step.variables[collection][name]), np.asarray(array))
    model.eval()
    assert bridge.check_equivalence(linen_model, variables, bridge.to_torch(model)).ok


def test_nnx_to_torch_to_nnx_is_bit_exact_for_the_cnn_and_the_mlp() -> None:
    for model in (_cnn(), _mlp()):
        back = bridge.to_nnx(bridge.to_torch(model))
        assert type(back) is nnx.Sequential
        for original, returned in zip(discover_chain(model), discover_chain(back), strict=True):
            assert original.kind == returned.kind
            for collection, arrays in original.variables.items():
                for name, array in arrays.items():
                    np.testing.assert_array_equal(np.asarray(returned.variables[collection][name]), np.asarray(array))


def test_training_mode_is_refused_with_the_fix() -> None:
    model = _mlp()  # NNX Dropout and BatchNorm start in training mode
    with pytest.raises(
        bridge.InvalidArgumentError, match=r"layer 3 \(Dropout at 'layers/3'\) is in training mode.*model\.eval\(\)"
    ):
        bridge.check_equivalence(model, None, bridge.to_torch(model))


def test_load_into_and_state_dict_accept_nnx() -> None:
    rngs = nnx.Rngs(3)
    model = nnx.Sequential(
        nnx.Linear(3, 4, rngs=rngs), nnx.relu, nnx.Linear(4, 4, rngs=rngs), nnx.relu, nnx.Linear(4, 2, rngs=rngs)
    )
    twin = bridge.load_into(model, None, torch_impl.SeqMLP(3, 4, 2))
    assert set(bridge.to_state_dict(model)) == set(twin.state_dict())
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(twin(torch.from_numpy(x)).detach().numpy(), np.asarray(model(x)), rtol=1e-5, atol=1e-6)


def test_nnx_models_that_are_not_a_sequential_or_get_variables_are_refused() -> None:
    linear = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    with pytest.raises(bridge.UnsupportedModelError, match=r"not an nnx\.Sequential"):
        bridge.to_torch(linear)
    with pytest.raises(bridge.UnsupportedModelError, match="holds its own variables"):
        bridge.to_torch(nnx.Sequential(linear), {"params": {}})


def test_bfloat16_check_of_an_nnx_model_leaves_it_in_float32() -> None:
    model = _cnn()
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 3)).astype(np.float32)
    report = bridge.check_equivalence(model, None, bridge.to_torch(model), x, dtype="bfloat16")
    assert report.ok, str(report)
    assert model.layers[0].kernel[...].dtype == jax.numpy.float32
