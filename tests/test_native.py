"""to_torch of any Flax model: a torch.fx GraphModule built from the model's jaxpr, checked by the checker.

Every model is converted with check=True (the checker compares every call and the gradients), and the
result is also compared here, independently, with JAX's own outputs and gradients.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx
from native_models import Glue, PoolCNN, TokenModel
from tree_models import CNN, ResNet, TransformerBlock

import bridge
from bridge._tensors import to_numpy, to_tensor
from bridge.convert import load_export, write_export
from flax_impl import SeqMLP

BF16 = np.dtype(ml_dtypes.bfloat16)


def _model(name: str) -> tuple[nn.Module, Any, Any]:
    """(model, variables, example input) for each model of the issue."""
    rng = np.random.default_rng(0)
    if name == "token":
        tokens = rng.integers(0, 50, size=(3, 7)).astype(np.int32)
        tokens[0, 5:] = 0  # padding, masked out
        model: nn.Module = TokenModel()
        return model, model.init(jax.random.PRNGKey(0), tokens), tokens
    model, shape = {
        "cnn": (CNN(), (2, 28, 28, 1)),
        "pool-cnn": (PoolCNN(), (2, 12, 12, 3)),
        "resnet": (ResNet(), (2, 8, 8, 2)),
        "transformer": (TransformerBlock(), (2, 5, 32)),
    }[name]
    x = rng.normal(size=shape).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    if "batch_stats" in variables:  # statistics that are not the identity, so that loading them matters
        stats = variables["batch_stats"]
        variables = {
            **variables,
            "batch_stats": jax.tree.map(lambda a: a + rng.uniform(0.2, 0.8, size=a.shape).astype(a.dtype), stats),
        }
    return model, variables, x


def _cast(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(
        lambda a: np.asarray(a).astype(dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else a, tree
    )


MODELS = ["cnn", "pool-cnn", "resnet", "transformer", "token"]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", MODELS)
def test_every_model_converts_and_passes_the_checker(name: str, dtype: str) -> None:
    model, variables, x = _model(name)
    if dtype == "bfloat16":
        variables, x = _cast(variables, BF16), _cast(x, BF16)
    module = bridge.to_torch(model, variables, x, check=True)  # raises NotEquivalentError otherwise
    assert isinstance(module, torch.fx.GraphModule)
    expected = np.asarray(model.apply(variables, x), np.float64)
    got = to_numpy(module(to_tensor(x))).astype(np.float64)
    assert got.shape == expected.shape
    scale = np.abs(expected).max()
    tolerance = 1e-5 if dtype == "float32" else 3e-2  # about 100 ulps of float32, 4 of bfloat16, of the largest
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance * scale)


def test_layers_are_torch_layers_at_their_flax_paths() -> None:
    model, variables, x = _model("resnet")
    module = bridge.to_torch(model, variables, x)
    assert type(module).__name__ == "ResNet"
    assert isinstance(module.get_submodule("ResBlock_1.Conv_0"), torch.nn.Conv2d)
    assert isinstance(module.get_submodule("ResBlock_1.BatchNorm_1"), torch.nn.BatchNorm1d)
    assert isinstance(module.get_submodule("Dense_0"), torch.nn.Linear)
    keys = set(module.state_dict())
    assert {"ResBlock_0.BatchNorm_0.running_mean", "ResBlock_0.Conv_1.weight", "Dense_0.bias"} <= keys
    stats = np.asarray(variables["batch_stats"]["ResBlock_0"]["BatchNorm_0"]["var"])
    np.testing.assert_array_equal(to_numpy(module.get_buffer("ResBlock_0.BatchNorm_0.running_var")), stats)
    code = module.code
    assert "self.ResBlock_0.Conv_0(" in code
    assert "torch.relu(" in code


def test_the_code_of_a_transformer_block_reads_as_torch() -> None:
    model, variables, x = _model("transformer")
    code = bridge.to_torch(model, variables, x).code
    for expected in ("self.LayerNorm_0(x)", "self.MultiHeadDotProductAttention_0.query(", "torch.exp(", "torch.tanh("):
        assert expected in code


@pytest.mark.slow
def test_gradients_reach_every_parameter_and_match_jax() -> None:
    model, variables, x = _model("transformer")
    module = bridge.to_torch(model, variables, x)
    module(to_tensor(x)).sum().backward()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None, name
        assert torch.count_nonzero(parameter.grad) > 0, name
    grads = jax.grad(lambda v: model.apply(v, x).sum())(variables)["params"]
    kernel = np.asarray(grads["Dense_0"]["kernel"]).T  # a Linear weight's gradient is the kernel's, transposed
    got = to_numpy(module.get_parameter("Dense_0.weight").grad)
    np.testing.assert_allclose(got, kernel, rtol=1e-4, atol=1e-5 * np.abs(kernel).max())


def test_a_parameter_used_between_layers_two_inputs_and_a_dict_output() -> None:
    model = Glue()
    rng = np.random.default_rng(1)
    x, bias = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(8,)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x, bias)
    variables = {"params": {**variables["params"], "scale": rng.uniform(0.5, 2, size=6).astype(np.float32)}}
    module = bridge.to_torch(model, variables, (x, bias), check=True)
    assert isinstance(module.get_parameter("scale"), torch.nn.Parameter)
    out = module(to_tensor(x), bias=to_tensor(bias))
    expected = model.apply(variables, x, bias)
    assert set(out) == {"out", "norm"}
    for key in out:
        np.testing.assert_allclose(to_numpy(out[key]), np.asarray(expected[key]), rtol=1e-5, atol=1e-6)


def test_state_dict_reloads_into_a_fresh_conversion_and_the_module_moves_dtype() -> None:
    model, variables, x = _model("pool-cnn")
    module = bridge.to_torch(model, variables, x)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    other = bridge.to_torch(model, model.init(jax.random.PRNGKey(5), x), x)
    before = other(to_tensor(x))
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(other(to_tensor(x)), module(to_tensor(x)))
    assert not torch.allclose(before, module(to_tensor(x)))
    wide = module.to(torch.float64)(to_tensor(x.astype(np.float64)))
    assert wide.dtype == torch.float64
    np.testing.assert_allclose(to_numpy(wide), np.asarray(model.apply(variables, x)), rtol=1e-4, atol=1e-5)


def test_torch_export_of_a_converted_module() -> None:
    model, variables, x = _model("cnn")
    module = bridge.to_torch(model, variables, x)
    exported = torch.export.export(module, (to_tensor(x),))
    torch.testing.assert_close(exported.module()(to_tensor(x)), module(to_tensor(x)))


def test_a_chain_stays_a_sequential_with_or_without_inputs() -> None:
    model = SeqMLP(hidden=4, out=2)
    x = np.ones((2, 3), np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    assert isinstance(bridge.to_torch(model, variables, x, check=True), torch.nn.Sequential)
    assert isinstance(bridge.to_torch(model, variables), torch.nn.Sequential)


def test_a_model_that_is_not_a_chain_needs_inputs() -> None:
    model, variables, _ = _model("cnn")
    with pytest.raises(bridge.UnsupportedModelError, match=r"pass example inputs: to_torch\(model, variables, x\)"):
        bridge.to_torch(model, variables)


class _Sorting(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(4)(jnp.sort(x, axis=-1))


class _Outer(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _Sorting(name="inner")(x)


def test_a_primitive_with_no_translation_is_named_with_its_flax_module() -> None:
    x = np.ones((2, 3), np.float32)
    model = _Outer()
    with pytest.raises(bridge.UnsupportedModelError, match=r"primitive 'sort' \(in the Flax module 'inner'\)"):
        bridge.to_torch(model, model.init(jax.random.PRNGKey(0), x), x)


@pytest.mark.slow
def test_check_true_refuses_a_wrong_translation(monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.convert import _primitives

    def wrong_tanh(emit: Any, eqn: Any, args: list[Any]) -> Any:
        return emit.call(torch.sigmoid, args[0])

    monkeypatch.setitem(_primitives.TABLE, "tanh", wrong_tanh)
    model, variables, x = _model("transformer")  # its tanh GELU runs between Dense_0 and Dense_1
    with pytest.raises(bridge.NotEquivalentError, match="Dense_1") as caught:
        bridge.to_torch(model, variables, x, check=True)
    assert not caught.value.report.ok


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "transformer", "token"])
def test_torch_export_with_a_dynamic_batch(name: str) -> None:
    model, variables, x = _model(name)
    module = bridge.to_torch(model, variables, x)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(module, (to_tensor(x),), dynamic_shapes=({0: batch},))
    other = np.concatenate([x, x[:1], x[::-1]])  # another batch size than the one traced
    expected = np.asarray(model.apply(variables, other))
    got = to_numpy(exported.module()(to_tensor(other)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    single = to_numpy(module(to_tensor(other[:1])))  # the module itself takes any batch too
    np.testing.assert_allclose(single, expected[:1], rtol=1e-5, atol=1e-5 * np.abs(expected).max())


class _MixedPrecision(nn.Module):
    """float32 parameters computing in bfloat16 (``dtype=``), as mixed-precision Flax models are written."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(nn.Dense(16, dtype=jnp.bfloat16)(x))
        return nn.Dense(4, dtype=jnp.bfloat16)(h) * 2


def test_mixed_precision_layers_keep_flaxs_dtypes() -> None:
    model = _MixedPrecision()
    x = np.random.default_rng(2).normal(size=(5, 8)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    module = bridge.to_torch(model, variables, x, check=True)
    assert module.get_parameter("Dense_0.weight").dtype == torch.bfloat16  # what Flax computes with
    out = module(to_tensor(x))
    expected = np.asarray(model.apply(variables, x), np.float64)
    assert out.dtype == torch.bfloat16  # as Flax returns it
    np.testing.assert_allclose(to_numpy(out).astype(np.float64), expected, rtol=0, atol=3e-2 * np.abs(expected).max())


class _NNXBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.linear = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.scale = nnx.Param(jnp.linspace(0.5, 2.0, 8))  # used between layers

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.norm(self.linear(x))) * self.scale


class _NNXModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.blocks = nnx.List([_NNXBlock(rngs)])
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.blocks[0](x)
        return self.head(h) + h[:, :3]


def test_an_nnx_model_converts_with_its_attribute_paths(tmp_path: Any) -> None:
    model = _NNXModel(nnx.Rngs(0))
    x = np.random.default_rng(4).normal(size=(5, 4)).astype(np.float32)
    module = bridge.to_torch(model, None, x, check=True)
    assert isinstance(module.get_submodule("blocks.0.linear"), torch.nn.Linear)
    np.testing.assert_array_equal(
        to_numpy(module.get_parameter("blocks.0.scale")), np.asarray(model.blocks[0].scale[...])
    )
    expected = np.asarray(model(x))
    np.testing.assert_allclose(to_numpy(module(to_tensor(x))), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    source, weights = write_export(module, "_NNXModel", tmp_path)
    torch.testing.assert_close(load_export(source, weights, "_NNXModel")(to_tensor(x)), module(to_tensor(x)))


@pytest.mark.parametrize("name", ["transformer", "token"])
def test_the_module_moves_to_another_device_and_dtype(name: str) -> None:
    model, variables, x = _model(name)
    module = bridge.to_torch(model, variables, x)
    meta = copy.deepcopy(module).to("meta")  # every tensor the graph makes must follow the module's device
    out = meta(to_tensor(x).to("meta"))
    assert out.device.type == "meta"
    assert tuple(out.shape) == np.shape(model.apply(variables, x))
    if name == "transformer":
        wide = module.to(torch.float64)(to_tensor(x.astype(np.float64)))
        assert wide.dtype == torch.float64
        expected = np.asarray(model.apply(variables, x))
        np.testing.assert_allclose(to_numpy(wide), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_keyword_inputs_with_fixed_values_and_a_wrapped_activation() -> None:
    from native_models import SmallEncoder

    rng = np.random.default_rng(5)
    ids = rng.integers(1, 30, size=(2, 6)).astype(np.int32)
    mask = np.ones((2, 6), np.float32)
    mask[1, 4:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "head_mask": None, "deterministic": True}
    model = SmallEncoder()
    variables = model.init(jax.random.PRNGKey(0), **inputs)
    module = bridge.to_torch(model, variables, inputs, check=True)  # None and the bool are fixed, not inputs
    out = module(input_ids=to_tensor(ids), attention_mask=to_tensor(mask))
    expected = model.apply(variables, **inputs)
    for key in ("last_hidden_state", "pooler_output"):
        np.testing.assert_allclose(to_numpy(out[key]), np.asarray(expected[key]), rtol=1e-5, atol=1e-5)


def test_a_conv_called_on_one_unbatched_example_converts_as_flax_runs_it() -> None:
    class Unbatched(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            return nn.Dense(3)(nn.relu(nn.Conv(4, (3, 3))(x)).reshape(-1))

    x = np.random.default_rng(0).standard_normal((6, 6, 2)).astype(np.float32)  # (H, W, C): no batch axis
    model = Unbatched()
    variables = model.init(jax.random.PRNGKey(0), x)
    converted = bridge.to_torch(model, variables, x, check=True)
    expected = np.asarray(model.apply(variables, x), np.float64)
    got = to_numpy(converted(to_tensor(x))).astype(np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
