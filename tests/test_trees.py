"""Any Flax model against any torch port: the Flax examples' MNIST CNN, a ResNet-style block with BatchNorm
and a skip, and a pre-LN transformer block on nn.MultiheadAttention and on separate q/k/v Linears; correct
ports pass (outputs and gradients), planted mistakes are located at the right submodule with the right hint."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from tree_models import (
    CNN,
    SEPARATE_BY_NAME,
    ClampedPort,
    ReluMLP,
    ResNet,
    TorchCNN,
    TorchResNet,
    TorchSeparateBlock,
    TorchTransformerBlock,
    TransformerBlock,
)

import bridge


@pytest.fixture(scope="module")
def mnist() -> tuple[nn.Module, Any, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((4, 28, 28, 1)).astype(np.float32)
    model = CNN()
    return model, model.init(jax.random.PRNGKey(0), x), x


@pytest.fixture(scope="module")
def resnet() -> tuple[nn.Module, Any, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 8, 2)).astype(np.float32)
    model = ResNet()
    variables = jax.tree_util.tree_map(np.array, model.init(jax.random.PRNGKey(0), x))
    for block in ("ResBlock_0", "ResBlock_1"):  # statistics that are not the identity
        for norm in ("BatchNorm_0", "BatchNorm_1"):
            stats = variables["batch_stats"][block][norm]
            stats["mean"] = (rng.standard_normal(8) * 0.1).astype(np.float32)
            stats["var"] = (1 + rng.random(8)).astype(np.float32)
    return model, variables, x


@pytest.fixture(scope="module")
def block() -> tuple[nn.Module, Any, np.ndarray]:
    x = np.random.default_rng(2).standard_normal((2, 6, 32)).astype(np.float32)
    model = TransformerBlock()
    return model, model.init(jax.random.PRNGKey(0), x), x


def test_mnist_cnn_port_with_its_own_names_is_loaded_and_passes(mnist: Any) -> None:
    model, variables, x = mnist
    port = bridge.load_into(model, variables, TorchCNN().eval(), inputs=x, channels_last=False)
    kernel = np.asarray(variables["params"]["Dense_0"]["kernel"])
    expected = kernel.reshape(7, 7, 64, 256).transpose(2, 0, 1, 3).reshape(-1, 256).T  # DESIGN.md's formula
    np.testing.assert_array_equal(port.fc1.weight.detach().numpy(), expected)
    np.testing.assert_array_equal(
        port.conv1.weight.detach().numpy(), np.asarray(variables["params"]["Conv_0"]["kernel"]).transpose(3, 2, 0, 1)
    )
    report = bridge.check_equivalence(model, variables, port, x, channels_last=False)
    assert report.ok, str(report)
    names = [(row.flax_path, row.torch_name) for row in report.layers]
    assert ("Conv_0", "conv1") in names
    assert ("Dense_0", "fc1") in names
    assert any("Dense_0/kernel <-> fc1.weight" in row.name for row in report.gradients)


def test_mnist_linear_without_the_flatten_permutation_is_located(mnist: Any) -> None:
    model, variables, x = mnist
    port = bridge.load_into(model, variables, TorchCNN().eval(), inputs=x, channels_last=False)
    with torch.no_grad():
        port.fc1.weight.copy_(torch.from_numpy(np.array(variables["params"]["Dense_0"]["kernel"]).T))
    report = bridge.check_equivalence(model, variables, port, x, channels_last=False, grads=False)
    assert not report.ok
    divergence = report.first_divergence
    assert divergence is not None
    assert (divergence.flax_path, divergence.torch_name, divergence.mode) == ("Dense_0", "fc1", "isolated")
    assert "torch's flatten of NCHW (nn.Flatten, torch.flatten) orders the features (C, H, W)" in str(divergence.hint)
    assert "channels_last=False" in str(divergence.hint)


def test_resnet_block_with_batchnorm_and_skip_passes(resnet: Any) -> None:
    model, variables, x = resnet
    port = bridge.load_into(model, variables, TorchResNet().eval(), inputs=x, channels_last=False)
    np.testing.assert_array_equal(
        port.layers[1].bn_b.running_var.numpy(), variables["batch_stats"]["ResBlock_1"]["BatchNorm_1"]["var"]
    )
    report = bridge.check_equivalence(model, variables, port, x, channels_last=False)
    assert report.ok, str(report)


def test_resnet_missing_residual_is_located_at_its_block(resnet: Any) -> None:
    model, variables, x = resnet
    port = bridge.load_into(model, variables, TorchResNet(residual=False).eval(), inputs=x, channels_last=False)
    report = bridge.check_equivalence(model, variables, port, x, channels_last=False, grads=False)
    divergence = report.first_divergence
    assert divergence is not None
    assert (divergence.flax_path, divergence.torch_name) == ("ResBlock_1", "layers.1")
    assert "the residual connection is missing" in str(divergence.hint)


@pytest.mark.slow
def test_transformer_block_on_multiheadattention_passes(block: Any) -> None:
    model, variables, x = block
    port = bridge.load_into(model, variables, TorchTransformerBlock().eval(), inputs=x)
    attention = variables["params"]["MultiHeadDotProductAttention_0"]
    packed = np.concatenate([np.asarray(attention[n]["kernel"]).reshape(32, 32).T for n in ("query", "key", "value")])
    np.testing.assert_array_equal(port.attn.in_proj_weight.detach().numpy(), packed)  # DESIGN.md's packing
    report = bridge.check_equivalence(model, variables, port, x)
    assert report.ok, str(report)
    assert any("<-> attn.in_proj_weight" in row.name for row in report.gradients)


@pytest.mark.slow
def test_explicit_rtol_atol_judge_every_call_the_output_and_the_gradients_of_a_tree(block: Any) -> None:
    """rtol/atol replace the derived tolerances of a tree as of a chain: a port whose attention output bias is
    off by 1e-3 fails the derived tolerances and passes atol=1e-2; a correct port fails rtol=1e-9, atol=0
    (below float32's rounding) in its calls, its output and its gradients."""
    model, variables, x = block
    port = bridge.load_into(model, variables, TorchTransformerBlock().eval(), inputs=x)
    exact = bridge.check_equivalence(model, variables, port, x, rtol=1e-9, atol=0.0)
    assert exact.settings["tolerance"] == "rtol=1e-09, atol=0"
    assert not any(row.end_to_end.ok for row in exact.layers if row.end_to_end.max_abs > 0)
    assert not exact.output.ok
    assert not all(row.comparison.ok for row in exact.gradients)
    with torch.no_grad():
        port.attn.out_proj.bias += 1e-3
    assert not bridge.check_equivalence(model, variables, port, x, grads=False).ok
    loose = bridge.check_equivalence(model, variables, port, x, atol=1e-2)
    assert loose.ok, str(loose)


def test_transformer_block_with_separate_qkv_linears_passes(block: Any) -> None:
    model, variables, x = block
    port = bridge.load_into(model, variables, TorchSeparateBlock().eval(), inputs=x)
    report = bridge.check_equivalence(model, variables, port, x)
    assert report.ok, str(report)
    names = {(row.flax_path, row.torch_name) for row in report.layers}
    assert ("MultiHeadDotProductAttention_0/query", "attention.q_proj") in names
    assert ("MultiHeadDotProductAttention_0", "attention") in names


@pytest.mark.parametrize(
    ("mistake", "where", "hint"),
    [
        ("swapped", ("MultiHeadDotProductAttention_0", "attention"), "torch swaps query and key"),
        ("scale", ("MultiHeadDotProductAttention_0", "attention"), "scales the scores by 1/d (d = 8)"),
        ("no-residual", ("LayerNorm_1", "norm2"), "torch passes the output on unchanged where Flax adds to it"),
    ],
)
def test_planted_attention_mistakes_are_located(block: Any, mistake: str, where: tuple[str, str], hint: str) -> None:
    model, variables, x = block
    port = TorchSeparateBlock(mistake=mistake).eval()
    port = bridge.load_into(model, variables, port, inputs=x, mapping=SEPARATE_BY_NAME)
    report = bridge.check_equivalence(model, variables, port, x, grads=False)
    divergence = report.first_divergence
    assert divergence is not None
    assert (divergence.flax_path, divergence.torch_name) == where, str(report)
    assert hint in str(divergence.hint)


def test_exact_gelu_in_the_port_is_named_between_the_two_layers(block: Any) -> None:
    model, variables, x = block
    port = bridge.load_into(model, variables, TorchTransformerBlock(exact_gelu=True).eval(), inputs=x)
    report = bridge.check_equivalence(model, variables, port, x, grads=False)
    divergence = report.first_divergence
    assert divergence is not None
    assert (divergence.flax_path, divergence.torch_name) == ("Dense_1", "mlp.fc2")
    assert "use torch.nn.GELU(approximate='tanh')" in str(divergence.hint)


def test_layernorm_epsilon_is_located_with_its_fix(block: Any) -> None:
    model, variables, x = block
    quiet = (x * 1e-3).astype(np.float32)  # a low-variance input: epsilon decides
    port = bridge.load_into(model, variables, TorchTransformerBlock(eps=1e-5).eval(), inputs=quiet)
    report = bridge.check_equivalence(model, variables, port, quiet, grads=False)
    divergence = report.first_divergence
    assert divergence is not None
    assert (divergence.flax_path, divergence.torch_name) == ("LayerNorm_0", "ln1"), str(report)
    assert "construct it with eps=1e-06" in str(divergence.hint)


def test_an_untransposed_square_kernel_is_named(block: Any) -> None:
    model, variables, x = block
    port = bridge.load_into(model, variables, TorchSeparateBlock().eval(), inputs=x)
    with torch.no_grad():
        port.attention.o_proj.weight.copy_(port.attention.o_proj.weight.t().clone())
    report = bridge.check_equivalence(model, variables, port, x, grads=False)
    divergence = report.first_divergence
    assert divergence is not None
    assert (divergence.flax_path, divergence.torch_name) == ("MultiHeadDotProductAttention_0/out", "attention.o_proj")
    assert "holds the Flax values untransposed" in str(divergence.hint)


def test_mapping_overrides_and_bad_mappings_are_refused(mnist: Any) -> None:
    model, variables, x = mnist
    port = bridge.load_into(
        model, variables, TorchCNN().eval(), inputs=x, channels_last=False, mapping={"Dense_*": "fc*"}
    )
    report = bridge.check_equivalence(model, variables, port, x, channels_last=False, mapping={"Conv_1": "conv2"})
    assert report.ok, str(report)
    with pytest.raises(bridge.LayerMismatchError, match=r"mapping pairs Flax Dense_0 \(Dense\) with torch conv1"):
        bridge.check_equivalence(model, variables, port, x, channels_last=False, mapping={"Dense_*": "conv*"})


def test_a_port_missing_a_layer_lists_it(mnist: Any) -> None:
    model, variables, x = mnist

    class Shorter(TorchCNN):
        def __init__(self) -> None:
            super().__init__()
            self.fc2 = torch.nn.Identity()  # type: ignore[assignment]
            self.fc1 = torch.nn.Linear(7 * 7 * 64, 10)

    with pytest.raises(bridge.LayerMismatchError, match=r"Flax Dense_0 \(Dense\) has no torch counterpart"):
        bridge.load_into(model, variables, Shorter().eval(), inputs=x, channels_last=False)


class TwoInputs(nn.Module):
    """Several inputs, integer tokens, and a dict output (as Hugging Face models return)."""

    @nn.compact
    def __call__(self, tokens: jax.Array, features: jax.Array) -> dict[str, jax.Array]:
        h = nn.Embed(11, 8)(tokens).mean(axis=1) + nn.Dense(8)(features)
        return {"logits": nn.log_softmax(nn.Dense(3)(nn.relu(h))), "hidden": h}


class TorchTwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 8)
        self.proj = torch.nn.Linear(5, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(tokens).mean(dim=1) + self.proj(features)
        return torch.log_softmax(self.head(torch.relu(h)), dim=-1), h


def test_several_inputs_integer_tokens_and_dict_outputs() -> None:
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 11, (4, 6)).astype(np.int32)
    features = rng.standard_normal((4, 5)).astype(np.float32)
    model = TwoInputs()
    variables = model.init(jax.random.PRNGKey(0), tokens, features)
    port = bridge.load_into(model, variables, TorchTwoInputs().eval(), inputs=(tokens, features))
    report = bridge.check_equivalence(model, variables, port, (tokens, features))
    assert report.ok, str(report)
    assert report.output.size == 4 * 3 + 4 * 8  # both leaves compared, by position
    by_name = bridge.check_equivalence(model, variables, port, {"tokens": tokens, "features": features})
    assert by_name.ok, str(by_name)


@pytest.mark.slow
def test_command_line_checks_a_cnn_port_with_its_own_inputs_and_mapping(tmp_path: Any) -> None:
    """flax2torch check --flax M:A --torch M:A --input-shape ... --channels-first [--mapping FILE]."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    models = Path(__file__).parent / "tree_models.py"
    (tmp_path / "user_models.py").write_text(models.read_text())
    (tmp_path / "map.json").write_text(json.dumps({"Dense_*": "fc*"}))
    args = ["check", "--flax", "user_models:CNN", "--torch", "user_models:TorchCNN", "--input-shape", "2,28,28,1"]

    def cli(*options: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "bridge", *args, *options]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)

    run = cli("--channels-first", "--mapping", "map.json", "--no-grads")
    assert run.returncode == 0, run.stderr
    assert "equivalence check: EQUIVALENT" in run.stdout
    assert "  Dense_0" in run.stdout  # the report prints the call tree, children indented
    wrong = cli("--no-grads")
    assert wrong.returncode == 1, wrong.stderr  # NHWC fed to an NCHW port: its first conv cannot take the weights
    assert wrong.stdout.startswith("NOT EQUIVALENT")
    exact = cli("--channels-first", "--no-grads", "--rtol", "1e-9", "--atol", "0")
    assert exact.returncode == 1, exact.stderr  # a correct port, held below float32's rounding
    assert "tolerance rtol=1e-09, atol=0" in exact.stdout
    wide = cli("--channels-first", "--no-grads", "--dtype", "float64")
    assert wide.returncode == 0, wide.stdout + wide.stderr
    assert "dtype float64" in wide.stdout
    sweep = cli("--channels-first", "--no-grads", "--seeds", "2")
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    assert "2/2 seeds equivalent" in sweep.stdout


def test_mnist_cnn_written_as_a_sequential_converts_with_its_pooling() -> None:
    """The same CNN as one nn.Sequential (pooling as functools.partial): converted in both layouts, checked."""
    import functools

    pool = functools.partial(nn.avg_pool, window_shape=(2, 2), strides=(2, 2))
    model = nn.Sequential(
        [nn.Conv(8, (3, 3)), nn.relu, pool, nn.Conv(16, (3, 3)), nn.relu, pool, bridge.flatten, nn.Dense(10)]
    )
    x = np.random.default_rng(4).standard_normal((2, 28, 28, 1)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    assert bridge.check_equivalence(model, variables, bridge.to_torch(model, variables), x).ok
    first = bridge.to_torch(model, variables, channels_last=False)
    assert bridge.check_equivalence(model, variables, first, x, channels_last=False).ok


@pytest.mark.slow
@pytest.mark.parametrize("mistake", [None, "swapped", "scale", "no-residual", "gelu"])
def test_calibrating_only_where_the_bounds_fail_gives_the_verdicts_of_calibrating_everything(
    block: Any, mistake: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge.check import _gradients

    model, variables, x = block
    kind = TorchTransformerBlock(exact_gelu=True) if mistake == "gelu" else TorchSeparateBlock(mistake=mistake)
    by_name = SEPARATE_BY_NAME if isinstance(kind, TorchSeparateBlock) else None
    port = bridge.load_into(model, variables, kind.eval(), inputs=x, mapping=by_name)
    lazy = bridge.check_equivalence(model, variables, port, x)
    monkeypatch.setattr(_gradients, "CALIBRATE_LAZILY", False)
    everywhere = bridge.check_equivalence(model, variables, port, x)
    assert lazy.ok == everywhere.ok == (mistake is None)
    assert [r.ok for r in lazy.layers] == [r.ok for r in everywhere.layers]
    assert [g.comparison.ok for g in lazy.gradients] == [g.comparison.ok for g in everywhere.gradients]
    assert lazy.first_divergence == everywhere.first_divergence
    assert lazy.settings["calibrated"] < everywhere.settings["calibrated"]  # the point: fewer float64 runs
    if mistake is not None:  # a comparison failing by far is judged again; in a correct port that is rounding's call
        assert lazy.settings["calibrated"] > 0


@pytest.mark.slow
def test_a_tree_is_checked_in_float64_where_a_1e_12_change_shows(block: Any) -> None:
    """dtype="float64" casts copies of both sides of a tree: a correct port passes, its output bias off by
    1e-12 is located at the attention (invisible in float32, where the same port passes), and the port and
    variables given stay float32."""
    model, variables, x = block
    port = bridge.load_into(model, variables, TorchTransformerBlock().eval(), inputs=x)
    with jax.enable_x64(True):
        report = bridge.check_equivalence(model, variables, port, x, dtype="float64")
        assert report.ok, str(report)
        assert report.settings["dtype"] == "float64"
        with torch.no_grad():
            port.attn.out_proj.bias += 1e-12
        off = bridge.check_equivalence(model, variables, port, x, dtype="float64", grads=False)
    assert port.attn.out_proj.bias.dtype == torch.float32
    assert jax.tree_util.tree_leaves(variables)[0].dtype == np.float32
    divergence = off.first_divergence
    assert divergence is not None
    assert (divergence.flax_path, divergence.torch_name, divergence.mode) == (
        "MultiHeadDotProductAttention_0",
        "attn",
        "isolated",
    ), str(off)
    assert bridge.check_equivalence(model, variables, port, x, grads=False).ok  # float32 cannot see 1e-12
    with jax.enable_x64(True), pytest.raises(bridge.LayerMismatchError, match=r"port\.to\(torch\.float64\) first"):
        bridge.load_into(model, variables, TorchTransformerBlock().eval(), inputs=x.astype(np.float64))


def test_a_channels_first_cnn_is_checked_in_bfloat16_and_its_flatten_order_still_found(mnist: Any) -> None:
    """In bfloat16 the two sides' features differ by bfloat16's rounding, yet the order of torch's flatten
    of NCHW is still told from the values: the correct port passes; one without the flatten permutation is
    located at its Linear. (Gradients are left out: in bfloat16 their margin here, 0.8 of the tolerance at
    worst over four seeds, depends on the convolution kernels of the machine.)"""
    model, variables, x = mnist
    port = bridge.load_into(model, variables, TorchCNN().eval(), inputs=x, channels_last=False)
    report = bridge.check_equivalence(model, variables, port, x, channels_last=False, dtype="bfloat16", grads=False)
    assert report.ok, str(report)
    assert report.settings["dtype"] == "bfloat16"
    with torch.no_grad():
        port.fc1.weight.copy_(torch.from_numpy(np.array(variables["params"]["Dense_0"]["kernel"]).T))
    report = bridge.check_equivalence(model, variables, port, x, channels_last=False, dtype="bfloat16", grads=False)
    divergence = report.first_divergence
    assert divergence is not None
    assert (divergence.flax_path, divergence.torch_name) == ("Dense_0", "fc1"), str(report)


def test_dtype_is_refused_for_a_tree_whose_layer_computes_in_its_own() -> None:
    class Fixed(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            return nn.Dense(2, dtype=jax.numpy.float32, name="head")(nn.relu(nn.Dense(4, name="body")(x)))

    class Port(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.body(x)))

    x = np.ones((2, 3), np.float32)
    model = Fixed()
    variables = model.init(jax.random.PRNGKey(0), x)
    port = bridge.load_into(model, variables, Port(), inputs=x)
    with pytest.raises(bridge.InvalidArgumentError, match=r"^head computes in float32 \(its dtype=\).*dtype='float32'"):
        bridge.check_equivalence(model, variables, port, x, dtype="bfloat16")


def test_seeds_sweep_a_tree_each_seed_as_its_own_check(block: Any) -> None:
    """seeds= on a tree: each seed's variables are model.init(PRNGKey(seed), x), loaded into a copy of the
    port by structure and checked as one check of that seed would be (the detailed seed's rows are those of
    that check); a planted mistake fails every seed and is located; the port is left as it was."""
    model, variables, x = block
    port = bridge.load_into(model, variables, TorchSeparateBlock().eval(), inputs=x)
    before = {k: v.clone() for k, v in port.state_dict().items()}
    sweep = bridge.check_equivalence(model, variables, port, x, seeds=[5, 7, 9])
    assert sweep.ok, str(sweep)
    assert sweep.seeds == (5, 7, 9)
    assert len(set(sweep.worst_ratio)) == 3  # three seeds' own weights, not one seed's three times
    assert all(torch.equal(before[k], v) for k, v in port.state_dict().items())
    own = model.init(jax.random.PRNGKey(5), x)
    single = bridge.check_equivalence(
        model, own, bridge.load_into(model, own, TorchSeparateBlock().eval(), inputs=x), x
    )
    assert sweep.detailed_seed == 5
    assert [r.flax_path for r in sweep.detailed.layers] == [r.flax_path for r in single.layers]
    np.testing.assert_allclose(
        [r.end_to_end.worst_ratio for r in sweep.detailed.layers],
        [r.end_to_end.worst_ratio for r in single.layers],
        rtol=1e-3,
    )
    assert len(sweep.detailed.gradients) == len(single.gradients) > 0
    wrong = bridge.load_into(model, variables, TorchSeparateBlock(mistake="scale").eval(), inputs=x)
    failed = bridge.check_equivalence(model, variables, wrong, x, seeds=range(2), grads=False)
    assert failed.failed_seeds == (0, 1)
    divergence = failed.detailed.first_divergence
    assert divergence is not None
    assert (divergence.flax_path, divergence.torch_name) == ("MultiHeadDotProductAttention_0", "attention")


@pytest.mark.slow
def test_a_tree_sweep_details_the_first_failing_seed() -> None:
    """A port wrong only for initialisations whose fc1.weight[0, 0] is negative (seeds 1 and 3 of 0..3, by
    JAX's counter-based PRNG on every machine): those seeds fail, and seed 1 gets the full report."""
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    model = ReluMLP()
    variables = model.init(jax.random.PRNGKey(0), x)
    port = bridge.load_into(model, variables, ClampedPort(wrong_when_negative=True), inputs=x)
    signs = [float(model.init(jax.random.PRNGKey(s), x)["params"]["Dense_1"]["kernel"][0, 0]) < 0 for s in range(4)]
    assert signs == [False, True, False, True]
    sweep = bridge.check_equivalence(model, variables, port, x, seeds=range(4))
    assert sweep.failed_seeds == (1, 3)
    assert sweep.detailed_seed == 1
    assert not sweep.detailed.ok
    assert sweep.detailed.gradients  # the detailed seed is checked again with its gradients
