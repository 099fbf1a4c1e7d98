"""The equivalence checker: no false alarms on correct ports, and each planted bug localised and explained."""

from __future__ import annotations

import json
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from models import init_with_random_biases, relu_mlp

import bridge
import flax_impl


def _ported(widths: tuple[int, ...], seed: int = 0) -> tuple[nn.Module, Any, torch.nn.Sequential]:
    model = relu_mlp(widths)
    variables = init_with_random_biases(model, widths[0], seed)
    return model, variables, bridge.to_torch(model, variables)


# ---------------------------------------------------------------- correct ports pass


@pytest.mark.slow
@given(
    widths=st.lists(st.integers(1, 96), min_size=2, max_size=5).map(tuple),
    seed=st.integers(0, 2**16),
    n_inputs=st.integers(1, 40),
)
@settings(max_examples=25)
def test_no_false_alarm_on_correct_float32_ports(widths: tuple[int, ...], seed: int, n_inputs: int) -> None:
    model, variables, port = _ported(widths, seed)
    report = bridge.check_equivalence(model, variables, port, seed=seed, n_inputs=n_inputs)
    assert report.ok, str(report)
    assert report.first_divergence is None


@pytest.mark.slow
@given(widths=st.lists(st.integers(1, 64), min_size=2, max_size=4).map(tuple), seed=st.integers(0, 2**16))
@settings(max_examples=10)
def test_no_false_alarm_on_correct_bfloat16_ports(widths: tuple[int, ...], seed: int) -> None:
    model, variables, port = _ported(widths, seed)
    report = bridge.check_equivalence(model, variables, port, seed=seed, dtype="bfloat16")
    assert report.ok, str(report)
    assert report.settings["dtype"] == "bfloat16"


def test_bfloat16_catches_a_change_of_a_few_ulps() -> None:
    model, variables, port = _ported((16, 32, 32, 8))
    with torch.no_grad():
        port[2].weight.mul_(1 + 2**-6)  # 2 bfloat16 ulps
    report = bridge.check_equivalence(model, variables, port, dtype="bfloat16", grads=False)
    assert not report.ok
    assert report.first_divergence is not None
    assert report.first_divergence.index == 2


def test_float64_ports_pass_and_a_1e_12_change_is_caught() -> None:
    with jax.enable_x64(True):
        model = relu_mlp((16, 64, 64, 8))
        variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), init_with_random_biases(model, 16))
        port = bridge.to_torch(model, variables)
        assert port[0].weight.dtype == torch.float64
        report = bridge.check_equivalence(model, variables, port)
        assert report.ok, str(report)
        assert report.settings["dtype"] == "float64"
        with torch.no_grad():
            port[4].weight.mul_(1 + 1e-12)
        report = bridge.check_equivalence(model, variables, port, grads=False)
    assert not report.ok
    assert report.first_divergence is not None
    assert report.first_divergence.index == 4


def test_float64_without_x64_is_refused_with_the_fix() -> None:
    model, variables, port = _ported((3, 4, 2))
    with pytest.raises(bridge.InvalidArgumentError, match=r"jax_enable_x64"):
        bridge.check_equivalence(model, variables, port, dtype="float64")


@pytest.mark.slow
def test_no_false_alarm_on_a_1024_4096_4096_1024_port_and_a_1e_4_change_is_caught() -> None:
    model, variables, port = _ported((1024, 4096, 4096, 1024))
    report = bridge.check_equivalence(model, variables, port)
    assert report.ok, str(report)
    worst = max(row.end_to_end.worst_ratio for row in report.layers)
    assert worst < 0.5, f"correct port uses {worst:.2f} of the tolerance: too little margin"
    with torch.no_grad():
        port[2].weight.mul_(1 + 1e-4)
    report = bridge.check_equivalence(model, variables, port, grads=False)
    assert not report.ok
    assert report.first_divergence is not None
    assert report.first_divergence.index == 2
    assert report.first_divergence.hint is not None
    assert (
        "torch weight differs from Flax params/kernel (laid out for torch) by up to 1.0e-04"
        in report.first_divergence.hint
    )


# ---------------------------------------------------------------- planted bugs, one per hint and position


@pytest.mark.parametrize("position", [0, 2, 4])
def test_untransposed_square_kernel_is_named_at_its_position(position: int) -> None:
    model, variables, port = _ported((6, 6, 6, 6))
    with torch.no_grad():
        port[position].weight.copy_(port[position].weight.T.clone())  # the kernel, untransposed
    report = bridge.check_equivalence(model, variables, port)
    assert not report.ok
    divergence = report.first_divergence
    assert divergence is not None
    assert (divergence.index, divergence.kind, divergence.mode) == (position, "Dense", "isolated")
    assert divergence.flax_path == f"layers_{position}"
    assert divergence.torch_name == str(position)
    assert divergence.hint is not None
    assert "untransposed" in divergence.hint


@pytest.mark.parametrize("position", [0, 2, 4])
def test_a_1e_4_weight_change_is_localised(position: int) -> None:
    model, variables, port = _ported((8, 16, 16, 4))
    with torch.no_grad():
        port[position].weight.mul_(1 + 1e-4)
    report = bridge.check_equivalence(model, variables, port, grads=False)
    assert report.first_divergence is not None
    assert report.first_divergence.index == position
    assert report.first_divergence.hint is not None
    assert "torch weight differs from Flax params/kernel" in report.first_divergence.hint
    # layers before the bug are fine on their own and end to end
    assert all(row.ok for row in report.layers[:position])


def test_missing_bias_is_named() -> None:
    model, variables, port = _ported((5, 6, 3))
    without_bias = torch.nn.Linear(5, 6, bias=False)
    with torch.no_grad():
        without_bias.weight.copy_(port[0].weight)
    port[0] = without_bias
    report = bridge.check_equivalence(model, variables, port, grads=False)
    assert report.first_divergence is not None
    assert report.first_divergence.index == 0
    assert "has no bias but the Flax Dense does" in str(report.first_divergence.hint)


def test_extra_bias_is_named() -> None:
    model = relu_mlp((5, 6, 3), use_bias=False)
    variables = model.init(jax.random.PRNGKey(0), np.ones((1, 5), np.float32))
    port = bridge.to_torch(model, variables)
    with_bias = torch.nn.Linear(6, 3)
    with torch.no_grad():
        with_bias.weight.copy_(port[2].weight)
    port[2] = with_bias
    report = bridge.check_equivalence(model, variables, port, grads=False)
    assert report.first_divergence is not None
    assert report.first_divergence.index == 2
    assert "has a bias the Flax Dense lacks" in str(report.first_divergence.hint)


@pytest.mark.parametrize(
    ("position", "wrong", "name"),
    [(1, torch.nn.Tanh(), "tanh"), (3, torch.nn.Sigmoid(), "sigmoid"), (3, torch.nn.Identity(), "identity")],
)
def test_wrong_activation_is_named_at_its_position(position: int, wrong: torch.nn.Module, name: str) -> None:
    model, variables, port = _ported((4, 8, 8, 2))
    port[position] = wrong
    report = bridge.check_equivalence(model, variables, port)
    assert report.first_divergence is not None
    assert report.first_divergence.index == position
    assert f"computes {name}" in str(report.first_divergence.hint)
    assert "where Flax applies relu" in str(report.first_divergence.hint)


def test_exact_gelu_for_flax_tanh_approximation_is_named() -> None:
    model = nn.Sequential([nn.Dense(16), nn.gelu, nn.Dense(4)])
    variables = init_with_random_biases(model, 8)
    port = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    bridge.load_into(
        nn.Sequential([nn.Dense(16)]),
        {"params": {"layers_0": variables["params"]["layers_0"]}},
        torch.nn.Sequential(port[0]),
    )
    bridge.load_into(
        nn.Sequential([nn.Dense(4)]),
        {"params": {"layers_0": variables["params"]["layers_2"]}},
        torch.nn.Sequential(port[2]),
    )
    report = bridge.check_equivalence(
        model, variables, port, inputs=np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32) * 3
    )
    assert report.first_divergence is not None
    assert report.first_divergence.index == 1
    assert "gelu (exact erf form, torch's default)" in str(report.first_divergence.hint)
    port[1] = torch.nn.GELU(approximate="tanh")
    assert bridge.check_equivalence(model, variables, port, grads=False).layers[1].isolated.ok  # type: ignore[union-attr]


def test_layernorm_epsilon_is_named() -> None:
    model = nn.Sequential([nn.LayerNorm(), nn.Dense(4)])
    variables = init_with_random_biases(model, 16)
    port = torch.nn.Sequential(torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))  # eps 1e-5, torch's default
    with torch.no_grad():
        port[0].bias.copy_(torch.from_numpy(np.asarray(variables["params"]["layers_0"]["bias"])))
    bridge.load_into(
        nn.Sequential([nn.Dense(4)]),
        {"params": {"layers_0": variables["params"]["layers_1"]}},
        torch.nn.Sequential(port[1]),
    )
    x = np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32) * 1e-3  # variance 1e-6: eps matters
    report = bridge.check_equivalence(model, variables, port, x, grads=False)
    assert report.first_divergence is not None
    assert report.first_divergence.index == 0
    assert "uses eps=1e-05 where Flax LayerNorm uses epsilon=1e-06" in str(report.first_divergence.hint)


def test_softmax_over_the_wrong_axis_is_named() -> None:
    model = nn.Sequential([nn.Dense(5), jax.nn.softmax])
    variables = init_with_random_biases(model, 3)
    port = torch.nn.Sequential(
        bridge.to_torch(nn.Sequential([nn.Dense(5)]), {"params": {"layers_0": variables["params"]["layers_0"]}})[0],
        torch.nn.Softmax(dim=0),
    )
    x = np.random.default_rng(0).normal(size=(4, 6, 3)).astype(np.float32)
    report = bridge.check_equivalence(model, variables, port, x)
    assert report.first_divergence is not None
    assert report.first_divergence.index == 1
    assert "torch normalises over dim 0, Flax over the last axis" in str(report.first_divergence.hint)


def test_dropout_left_in_training_mode_is_named() -> None:
    model = nn.Sequential([nn.Dense(32), nn.Dropout(0.5, deterministic=True), nn.Dense(2)])
    variables = init_with_random_biases(model, 4)
    dense = bridge.to_torch(
        nn.Sequential([nn.Dense(32), nn.Dense(2)]),
        {"params": {"layers_0": variables["params"]["layers_0"], "layers_1": variables["params"]["layers_2"]}},
    )
    port = torch.nn.Sequential(dense[0], torch.nn.Dropout(0.5), dense[1])  # .train() by default
    report = bridge.check_equivalence(model, variables, port, grads=False)
    assert report.first_divergence is not None
    assert report.first_divergence.index == 1
    assert "Dropout is in training mode: call .eval()" in str(report.first_divergence.hint)
    assert bridge.check_equivalence(model, variables, port.eval()).ok


def test_a_missing_layer_is_named() -> None:
    model, variables, port = _ported((4, 8, 8, 2))
    short = torch.nn.Sequential(port[0], port[1], port[2], port[4])  # the second ReLU forgotten
    report = bridge.check_equivalence(model, variables, short)
    assert not report.ok
    assert report.first_divergence is not None
    assert (report.first_divergence.index, report.first_divergence.mode) == (3, "structure")
    assert "torch lacks layer 3 (relu)" in str(report.first_divergence.hint)
    assert report.problems


def test_a_doubled_layer_is_named() -> None:
    model, variables, port = _ported((4, 8, 8, 2))
    doubled = torch.nn.Sequential(port[0], port[1], torch.nn.ReLU(), port[2], port[3], port[4])
    report = bridge.check_equivalence(model, variables, doubled)
    assert report.first_divergence is not None
    assert (report.first_divergence.index, report.first_divergence.mode) == (2, "structure")
    assert "torch has an extra ReLU at position 2" in str(report.first_divergence.hint)


# ---------------------------------------------------------------- NaN and Inf


def test_nan_on_both_sides_counts_as_equal() -> None:
    model, variables, port = _ported((3, 4, 2))
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    x[2, 1] = np.nan
    report = bridge.check_equivalence(model, variables, port, x, grads=False)
    assert report.ok, str(report)
    assert report.nonfinite == {"flax": 0, "torch": 0}


def test_nan_against_a_finite_value_is_a_mismatch_and_located() -> None:
    model, variables, port = _ported((3, 4, 4, 2))
    with torch.no_grad():
        port[2].weight[1, 0] = float("nan")
    report = bridge.check_equivalence(model, variables, port, grads=False)
    assert not report.ok
    assert report.nonfinite == {"flax": None, "torch": 2}
    assert report.layers[2].end_to_end.nonfinite_mismatched > 0
    assert report.first_divergence is not None
    assert report.first_divergence.index == 2
    assert "NaN/Inf first appears on the torch side at position 2" in str(report)


# ---------------------------------------------------------------- report, options, assert_equivalent


def test_report_table_json_and_row_statistics() -> None:
    model, variables, port = _ported((3, 4, 4, 2))
    with torch.no_grad():
        port[4].bias.add_(1e-3)
    report = bridge.check_equivalence(model, variables, port)
    text = str(report)
    assert text.splitlines()[0] == "flax-torch-bridge equivalence check: NOT EQUIVALENT"
    assert ">>  4     Dense" in text
    assert "hint: torch bias differs from Flax params/bias by up to" in text
    row = report.layers[4]
    assert row.end_to_end.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert row.end_to_end.mismatched_fraction == 1.0
    assert row.end_to_end.worst_ratio > 1
    document = json.loads(json.dumps(report.to_dict()))
    assert document["ok"] is False
    assert document["first_divergence"]["index"] == 4
    assert [layer["kind"] for layer in document["layers"]] == ["Dense", "relu", "Dense", "relu", "Dense"]
    assert {g["name"] for g in document["gradients"]} >= {"input", "layers_0/kernel <-> 0.weight"}


def test_gradients_of_a_custom_loss_are_mapped_across_frameworks() -> None:
    model, variables, port = _ported((3, 5, 2))
    report = bridge.check_equivalence(model, variables, port, loss=lambda y: (y**2).sum())
    assert report.ok, str(report)
    names = [g.name for g in report.gradients]
    assert names == [
        "input",
        "layers_0/kernel <-> 0.weight",
        "layers_0/bias <-> 0.bias",
        "layers_2/kernel <-> 2.weight",
        "layers_2/bias <-> 2.bias",
    ]
    assert report.gradients[1].comparison.shape == (5, 3)  # the kernel gradient, transposed like the weight


def test_explicit_tolerances_override_the_derived_ones() -> None:
    model, variables, port = _ported((3, 4, 2))
    with torch.no_grad():
        port[2].bias.add_(1e-4)
    assert not bridge.check_equivalence(model, variables, port, grads=False).ok
    loose = bridge.check_equivalence(model, variables, port, grads=False, atol=1e-3)
    assert loose.ok
    assert loose.settings["tolerance"] == "rtol=1.3e-06, atol=0.001"
    with pytest.raises(bridge.InvalidArgumentError, match="rtol and atol must be >= 0"):
        bridge.check_equivalence(model, variables, port, rtol=-1.0)


def test_the_torch_module_is_not_modified_by_a_dtype_cast() -> None:
    model, variables, port = _ported((3, 4, 2))
    bridge.check_equivalence(model, variables, port, dtype="bfloat16")
    assert port[0].weight.dtype == torch.float32


def test_assert_equivalent_raises_with_the_table_and_returns_the_report() -> None:
    model = flax_impl.SeqMLP(4, 2)
    variables = model.init(jax.random.PRNGKey(0), np.ones(3, np.float32))
    port = bridge.to_torch(model, variables)
    assert bridge.assert_equivalent(model, variables, port).ok
    with torch.no_grad():
        port[0].weight.mul_(1.01)
    with pytest.raises(
        AssertionError, match=r"(?s)not equivalent.*>> first divergence: position 0 \(Dense at 'Dense_0'"
    ):
        bridge.assert_equivalent(model, variables, port)


def test_bad_arguments_raise_bridge_errors() -> None:
    model, variables, port = _ported((3, 4, 2))
    partial = bridge.check_equivalence(model, variables, port[0])  # any port: checked as a tree, inputs drawn
    assert not partial.ok
    assert partial.first_divergence is not None
    assert partial.first_divergence.mode == "structure"
    assert "Flax layers_2 (Dense) has no torch counterpart" in str(partial.first_divergence.hint)
    with pytest.raises(bridge.InvalidArgumentError, match="n_inputs must be an integer >= 1"):
        bridge.check_equivalence(model, variables, port, n_inputs=0)
    with pytest.raises(
        bridge.LayerMismatchError,
        match=r"the Flax model failed in 'layers_0' \(Dense\) on its input of shape \(2, 5\): ",
    ):
        bridge.check_equivalence(model, variables, port, np.ones((2, 5), np.float32))
    wider = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(
        bridge.LayerMismatchError, match=r"the torch port failed in '0' \(Linear\) on its input of shape \(32, 3\)"
    ):
        bridge.check_equivalence(model, variables, wider)
