"""Flax NNX models that are not one nnx.Sequential, against torch ports with their own names: their
submodule calls are captured by attribute path (``block/linear1``) and go through the same matching,
loading and checking as linen trees; nnx.Sequential against nn.Sequential stays a chain."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from tree_models import (
    SEPARATE_BY_NAME,
    NNXBlock,
    NNXNet,
    NNXTransformerBlock,
    TorchNNXNet,
    TorchSeparateBlock,
    TorchTiedLM,
    TorchTransformerBlock,
)

import bridge
from bridge._errors import TiedWeightsWarning
from bridge.capture import capture_flax


def _net() -> NNXNet:
    model = NNXNet(nnx.Rngs(0))
    rng = np.random.default_rng(0)  # statistics and affine parameters that are not the identity
    model.bn.mean[...] = (0.3 * rng.standard_normal(8)).astype(np.float32)
    model.bn.var[...] = (1 + rng.random(8)).astype(np.float32)
    model.block.norm.scale[...] = (1 + 0.3 * rng.standard_normal(8)).astype(np.float32)
    model.eval()
    return model


def _x(scale: float = 1.0) -> np.ndarray:
    return (scale * np.random.default_rng(1).standard_normal((2, 6, 6, 3))).astype(np.float32)


def test_an_nnx_tree_is_loaded_by_structure_and_passes() -> None:
    model, x = _net(), _x()
    port = bridge.load_into(model, None, TorchNNXNet().eval(), inputs=x, channels_last=False)
    np.testing.assert_array_equal(port.body.up.weight.detach().numpy(), np.asarray(model.block.linear1.kernel[...]).T)
    np.testing.assert_array_equal(port.stem_bn.running_var.numpy(), np.asarray(model.bn.var[...]))
    np.testing.assert_array_equal(
        port.stem.weight.detach().numpy(), np.asarray(model.conv.kernel[...]).transpose(3, 2, 0, 1)
    )
    report = bridge.check_equivalence(model, None, port, x, channels_last=False)
    assert report.ok, str(report)
    names = {(row.flax_path, row.torch_name) for row in report.layers}
    assert {("block/linear1", "body.up"), ("block/norm", "body.ln"), ("bn", "stem_bn"), ("block", "body")} <= names
    assert any(row.name == "block/linear1/kernel <-> body.up.weight" for row in report.gradients)
    assert len(report.gradients) == 13  # the input's, and every parameter of conv, bn, norm, linear1, linear2, head
    assert report.gradients[0].name == "input"


def test_calls_are_recorded_in_execution_order_with_their_paths_and_the_classes_restored() -> None:
    model = _net()
    originals = {cls: vars(cls).get("__call__") for cls in (NNXNet, NNXBlock, nnx.Linear, nnx.Conv, nnx.LayerNorm)}
    _, calls = capture_flax(model, {}, (_x(),), {})
    assert [c.name for c in calls] == [
        "",
        "conv",
        "bn",
        "block",
        "block/norm",
        "block/linear1",
        "block/linear2",
        "head",
    ]
    assert [c.parent for c in calls] == [None, 0, 0, 0, 3, 3, 3, 0]
    assert calls[5].variables["params"]["kernel"].shape == (8, 16)
    assert set(calls[2].variables) == {"params", "batch_stats"}
    assert {cls: vars(cls).get("__call__") for cls in originals} == originals

    class Broken(NNXBlock):
        def __call__(self, x: jax.Array) -> jax.Array:
            return self.linear2(x)  # width 8 into a Linear that takes 16

    with pytest.raises(bridge.LayerMismatchError, match=r"the Flax model failed in 'linear2'"):
        capture_flax(Broken(8, nnx.Rngs(0)), {}, (np.ones((2, 8), np.float32),), {})
    assert {cls: vars(cls).get("__call__") for cls in originals} == originals
    assert Broken.__call__ is vars(Broken)["__call__"]
    assert Broken.__call__.__qualname__.endswith("Broken.__call__")


def test_a_module_called_twice_gives_two_calls_and_a_subclass_one() -> None:
    class Twice(nnx.Module):
        def __init__(self) -> None:
            self.shared = nnx.Linear(4, 4, rngs=nnx.Rngs(0))

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.shared(self.shared(x))

    class MyLinear(nnx.Linear):  # its own __call__ that calls the base's
        def __call__(self, x: jax.Array) -> jax.Array:
            return super().__call__(x) * 2

    _, calls = capture_flax(Twice(), {}, (np.ones((1, 4), np.float32),), {})
    assert [c.name for c in calls] == ["", "shared", "shared"]
    _, calls = capture_flax(MyLinear(4, 4, rngs=nnx.Rngs(0)), {}, (np.ones((1, 4), np.float32),), {})
    assert [(c.name, c.kind) for c in calls] == [("", "MyLinear")]


def test_missing_residual_in_the_port_is_located_at_the_block() -> None:
    model, x = _net(), _x()
    port = bridge.load_into(model, None, TorchNNXNet(residual=False).eval(), inputs=x, channels_last=False)
    report = bridge.check_equivalence(model, None, port, x, channels_last=False, grads=False)
    divergence = report.first_divergence
    assert divergence is not None
    assert (divergence.flax_path, divergence.torch_name) == ("block", "body"), str(report)
    assert "residual" in str(divergence.hint)


def test_layernorm_epsilon_is_located_in_the_nnx_block() -> None:
    model = _net()
    x = _x()
    port = bridge.load_into(model, None, TorchNNXNet(eps=1e-5).eval(), inputs=x, channels_last=False)
    quiet = (np.asarray(x) * 1e-3).astype(np.float32)  # with the stem's bias, the block's input varies little
    with torch.no_grad():
        port.stem.bias.zero_()
        port.stem_bn.running_mean.zero_()
    model.conv.bias[...] = np.zeros(8, np.float32)
    model.bn.mean[...] = np.zeros(8, np.float32)
    report = bridge.check_equivalence(model, None, port, quiet, channels_last=False, grads=False)
    divergence = report.first_divergence
    assert divergence is not None
    assert (divergence.flax_path, divergence.torch_name) == ("block/norm", "body.ln"), str(report)
    assert "construct it with eps=1e-06" in str(divergence.hint)


def test_training_mode_and_variables_are_refused_for_nnx_trees() -> None:
    model = NNXNet(nnx.Rngs(0))  # BatchNorm starts in training mode
    with pytest.raises(bridge.InvalidArgumentError, match=r"BatchNorm at 'bn' is in training mode.*model\.eval\(\)"):
        bridge.check_equivalence(model, None, TorchNNXNet().eval(), _x(), channels_last=False)
    model.eval()
    with pytest.raises(bridge.InvalidArgumentError, match="pass inputs="):
        bridge.load_into(model, None, TorchNNXNet(), channels_last=False)  # a tree is run once to see its calls
    with pytest.raises(bridge.UnsupportedModelError, match="holds its own variables"):
        bridge.load_into(model, {"params": {"x": 1}}, TorchNNXNet(), inputs=_x(), channels_last=False)
    with pytest.raises(bridge.InvalidArgumentError, match="an NNX model does not have"):
        bridge.check_equivalence(model, None, TorchNNXNet().eval(), _x(), channels_last=False, seeds=range(2))


def test_nnx_sequential_stays_a_chain_and_becomes_a_tree_against_another_port() -> None:
    rngs = nnx.Rngs(2)
    model = nnx.Sequential(nnx.Linear(3, 5, rngs=rngs), nnx.relu, nnx.Linear(5, 2, rngs=rngs))
    x = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    chain = bridge.check_equivalence(model, None, bridge.to_torch(model), x)
    assert chain.ok, str(chain)
    assert [row.torch_name for row in chain.layers] == ["0", "1", "2"]

    class Port(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.outp = torch.nn.Linear(3, 5), torch.nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.outp(torch.relu(self.inp(x)))

    port = bridge.load_into(model, None, Port(), inputs=x)
    np.testing.assert_array_equal(port.outp.bias.detach().numpy(), np.asarray(model.layers[2].bias[...]))
    tree = bridge.check_equivalence(model, None, port, x)
    assert tree.ok, str(tree)
    assert {("layers/0", "inp"), ("layers/2", "outp")} <= {(r.flax_path, r.torch_name) for r in tree.layers}


def test_a_wrong_weight_in_an_nnx_tree_is_named_at_its_layer() -> None:
    model, x = _net(), _x()
    port = bridge.load_into(model, None, TorchNNXNet().eval(), inputs=x, channels_last=False)
    with torch.no_grad():
        port.out.weight.mul_(1.5)
    report = bridge.check_equivalence(model, None, port, x, channels_last=False, grads=False)
    divergence = report.first_divergence
    assert divergence is not None
    assert (divergence.flax_path, divergence.torch_name, divergence.mode) == ("head", "out", "isolated"), str(report)
    assert "torch weight differs from Flax params/kernel (laid out for torch)" in str(divergence.hint)


class NNXTiedLM(nnx.Module):
    """TiedLM in NNX: the output projection is ``nnx.Embed.attend``."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(13, 8, rngs=rngs)
        self.dense = nnx.Linear(8, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.embed.attend(self.norm(nnx.relu(self.dense(self.embed(tokens)))))


def test_nnx_embed_attend_fills_a_tied_output_linear() -> None:
    model = NNXTiedLM(nnx.Rngs(4))
    tokens = np.random.default_rng(8).integers(0, 13, (3, 5)).astype(np.int32)
    port = TorchTiedLM().eval()
    with pytest.warns(TiedWeightsWarning, match=r"embed/embedding fills lm_head.weight, tok.weight \(shared"):
        bridge.load_into(model, None, port, inputs=tokens)
    np.testing.assert_array_equal(port.lm_head.weight.detach().numpy(), np.asarray(model.embed.embedding[...]))
    assert vars(nnx.Embed)["attend"].__qualname__ == "Embed.attend"  # restored after the capture
    report = bridge.check_equivalence(model, None, port, tokens)
    assert report.ok, str(report)
    assert ("embed", "Embed.attend", "lm_head") in {(r.flax_path, r.kind, r.torch_name) for r in report.layers}


@pytest.mark.parametrize("port_kind", [TorchTransformerBlock, TorchSeparateBlock])
def test_an_nnx_transformer_block_fills_and_passes_both_attention_ports(port_kind: type) -> None:
    model = NNXTransformerBlock(32, 4, nnx.Rngs(0))
    x = np.random.default_rng(0).standard_normal((2, 6, 32)).astype(np.float32)
    port = bridge.load_into(model, None, port_kind().eval(), inputs=x)
    report = bridge.check_equivalence(model, None, port, x)
    assert report.ok, str(report)
    attention = {(row.flax_path, row.torch_name) for row in report.layers if row.flax_path.startswith("attn")}
    expected = (
        {("attn", "attn")}
        if port_kind is TorchTransformerBlock
        else {("attn", "attention"), ("attn/query", "attention.q_proj")}
    )
    assert expected <= attention, attention
    assert len(report.gradients) == 1 + sum(1 for _ in port.parameters())  # the input's, then every parameter's


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mistake", "hint"), [("swapped", "torch swaps query and key"), ("scale", "scales the scores by 1/d (d = 8)")]
)
def test_attention_mistakes_in_a_port_of_an_nnx_block_are_located(mistake: str, hint: str) -> None:
    model = NNXTransformerBlock(32, 4, nnx.Rngs(0))
    x = np.random.default_rng(0).standard_normal((2, 6, 32)).astype(np.float32)
    port = bridge.load_into(model, None, TorchSeparateBlock(mistake=mistake).eval(), inputs=x, mapping=SEPARATE_BY_NAME)
    report = bridge.check_equivalence(model, None, port, x, grads=False)
    divergence = report.first_divergence
    assert divergence is not None
    assert (divergence.flax_path, divergence.torch_name) == ("attn", "attention"), str(report)
    assert hint in str(divergence.hint)


def test_a_float64_check_of_nnx_attention_is_refused_where_flax_computes_its_softmax_in_float32() -> None:
    """nnx.MultiHeadAttention runs jax.nn.dot_product_attention, which computes its softmax in float32: in a
    float64 check the reference is only float32-accurate there, so the derived tolerances would fail a correct
    port. The check refuses, naming the layer and the fix; explicit rtol/atol still check it."""
    model = NNXTransformerBlock(32, 4, nnx.Rngs(0))
    x = np.random.default_rng(0).standard_normal((2, 6, 32)).astype(np.float32)
    port = bridge.load_into(model, None, TorchTransformerBlock().eval(), inputs=x)
    with jax.enable_x64(True):
        with pytest.raises(bridge.InvalidArgumentError, match=r"^attn converts a float64 value to float32.*'float32'"):
            bridge.check_equivalence(model, None, port, x, dtype="float64", grads=False)
        explicit = bridge.check_equivalence(model, None, port, x, dtype="float64", grads=False, rtol=1e-5, atol=1e-6)
    assert explicit.ok, str(explicit)
