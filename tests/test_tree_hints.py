"""Hints on trees, each at the submodule where the planted mistake lies: an attention mask passed in Flax's
convention to torch's nn.MultiheadAttention, BatchNorm statistics left at torch's initial values, and
tied embeddings (``nn.Embed.attend``) filled and reported by ``load_into``."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest
import torch
from tree_models import MaskedAttention, ResNet, TiedLM, TorchMaskedAttention, TorchResNet, TorchTiedLM

import bridge
from bridge._errors import TiedWeightsWarning


@pytest.fixture(scope="module")
def masked() -> tuple[MaskedAttention, Any, np.ndarray]:
    x = np.random.default_rng(5).standard_normal((3, 6, 16)).astype(np.float32)
    model = MaskedAttention()
    return model, model.init(jax.random.PRNGKey(0), x, np.ones((3, 6), bool)), x


def _mask(padding: bool) -> np.ndarray:
    if padding:  # every sequence has kept and padded positions
        return np.arange(6)[None, :] < np.array([[4], [2], [5]])
    rows, cols = np.indices((6, 6))
    return (rows + cols) % 3 != 0  # every query attends some keys and skips others


@pytest.mark.slow
@pytest.mark.parametrize("padding", [True, False], ids=["key_padding_mask", "attn_mask"])
def test_a_correctly_inverted_mask_passes(masked: Any, padding: bool) -> None:
    model, variables, x = masked
    inputs = (x, _mask(padding))
    port = bridge.load_into(model, variables, TorchMaskedAttention(padding=padding).eval(), inputs=inputs)
    report = bridge.check_equivalence(model, variables, port, inputs)
    assert report.ok, str(report)


@pytest.mark.slow
@pytest.mark.parametrize("padding", [True, False], ids=["key_padding_mask", "attn_mask"])
def test_a_flax_mask_passed_straight_to_torch_is_named_at_the_attention(masked: Any, padding: bool) -> None:
    model, variables, x = masked
    inputs = (x, _mask(padding))
    port = bridge.load_into(model, variables, TorchMaskedAttention(padding=padding, invert=False).eval(), inputs=inputs)
    report = bridge.check_equivalence(model, variables, port, inputs, grads=False)
    assert not report.ok
    divergence = report.first_divergence
    assert divergence is not None
    assert (divergence.flax_path, divergence.torch_name) == ("MultiHeadDotProductAttention_0", "attn"), str(report)
    argument = "key_padding_mask" if padding else "attn_mask"
    assert f"gets {argument} in Flax's convention" in str(divergence.hint)
    assert f"{argument}=~mask" in str(divergence.hint)


def test_a_mask_that_differs_otherwise_gets_no_inversion_hint(masked: Any) -> None:
    model, variables, x = masked
    port = bridge.load_into(model, variables, TorchMaskedAttention().eval(), inputs=(x, _mask(True)))
    other = _mask(True).copy()
    other[0, 0] = False  # the port masks one position more than Flax: not an inverted mask
    report = bridge.check_equivalence(model, variables, port, (x, _mask(True)), torch_inputs=(x, other), grads=False)
    assert not report.ok
    assert "~mask" not in str(report.first_divergence.hint if report.first_divergence else "")


@pytest.fixture(scope="module")
def resnet() -> tuple[ResNet, Any, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 8, 2)).astype(np.float32)
    model = ResNet()
    variables = jax.tree_util.tree_map(np.array, model.init(jax.random.PRNGKey(0), x))
    for block in ("ResBlock_0", "ResBlock_1"):
        for norm in ("BatchNorm_0", "BatchNorm_1"):
            stats = variables["batch_stats"][block][norm]
            stats["mean"] = (rng.standard_normal(8) * 0.1).astype(np.float32)
            stats["var"] = (1 + rng.random(8)).astype(np.float32)
    return model, variables, x


def test_batchnorm_statistics_left_at_torch_defaults_are_named(resnet: Any) -> None:
    model, variables, x = resnet
    port = bridge.load_into(model, variables, TorchResNet().eval(), inputs=x, channels_last=False)
    port.layers[1].bn_a.reset_running_stats()  # weight and bias loaded, the statistics not
    report = bridge.check_equivalence(model, variables, port, x, channels_last=False, grads=False)
    divergence = report.first_divergence
    assert divergence is not None
    assert (divergence.flax_path, divergence.torch_name, divergence.mode) == (
        "ResBlock_1/BatchNorm_0",
        "layers.1.bn_a",
        "isolated",
    ), str(report)
    hint = str(divergence.hint)
    assert "still holds its initial running statistics" in hint
    assert "running_mean <- batch_stats/ResBlock_1/BatchNorm_0/mean" in hint
    assert "running_var <- batch_stats/ResBlock_1/BatchNorm_0/var" in hint


def test_batchnorm_with_statistics_loaded_but_a_wrong_scale_gets_no_statistics_hint(resnet: Any) -> None:
    model, variables, x = resnet
    port = bridge.load_into(model, variables, TorchResNet().eval(), inputs=x, channels_last=False)
    with torch.no_grad():
        port.layers[1].bn_a.weight.mul_(2)
    report = bridge.check_equivalence(model, variables, port, x, channels_last=False, grads=False)
    divergence = report.first_divergence
    assert divergence is not None
    assert divergence.torch_name == "layers.1.bn_a"
    assert "initial running statistics" not in str(divergence.hint)
    assert "torch weight differs from Flax params/scale" in str(divergence.hint)


@pytest.fixture(scope="module")
def tied() -> tuple[TiedLM, Any, np.ndarray]:
    tokens = np.random.default_rng(6).integers(0, 13, (3, 5)).astype(np.int32)
    model = TiedLM()
    return model, model.init(jax.random.PRNGKey(0), tokens), tokens


@pytest.mark.parametrize("tie", [True, False], ids=["shared", "copied"])
def test_tied_embeddings_fill_the_output_linear_and_are_reported(tied: Any, tie: bool) -> None:
    model, variables, tokens = tied
    port = TorchTiedLM(tie=tie).eval()
    with pytest.warns(TiedWeightsWarning) as seen:
        bridge.load_into(model, variables, port, inputs=tokens)
    message = " ".join(str(w.message) for w in seen)
    assert "Embed_0/embedding" in message
    assert "tok.weight" in message
    assert "lm_head.weight" in message
    assert ("shared" if tie else "copies") in message
    table = np.asarray(variables["params"]["Embed_0"]["embedding"])
    np.testing.assert_array_equal(port.lm_head.weight.detach().numpy(), table)
    np.testing.assert_array_equal(port.tok.weight.detach().numpy(), table)
    assert (port.lm_head.weight is port.tok.weight) == tie  # a shared weight stays shared
    report = bridge.check_equivalence(model, variables, port, tokens)
    assert report.ok, str(report)
    names = {(row.flax_path, row.kind, row.torch_name) for row in report.layers}
    assert ("Embed_0", "Embed.attend", "lm_head") in names
    assert ("Embed_0", "Embed", "tok") in names
    assert "Embed_0/embedding" in str(report.settings["tied"])


def test_an_output_linear_that_is_not_the_embedding_is_named(tied: Any) -> None:
    model, variables, tokens = tied
    with pytest.warns(TiedWeightsWarning, match="copies"):
        port = bridge.load_into(model, variables, TorchTiedLM(tie=False).eval(), inputs=tokens)
    with torch.no_grad():
        port.lm_head.weight.mul_(-1)
    report = bridge.check_equivalence(model, variables, port, tokens, grads=False)
    divergence = report.first_divergence
    assert divergence is not None
    assert (divergence.flax_path, divergence.torch_name, divergence.mode) == ("Embed_0", "lm_head", "isolated")
    assert "torch weight differs from Flax params/embedding" in str(divergence.hint)
