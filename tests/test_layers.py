"""Every layer rule: converted outputs pass the checker (float32 and float64), the round trip is
bit-exact, and the naive port (torch's defaults left as they are) is caught."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

import bridge
from bridge.capture import discover_chain


class Case(NamedTuple):
    """A chain with the layer under test, the input it gets, and (optionally) its naive torch port."""

    name: str
    layers: Callable[[], list[Any]]
    shape: tuple[int, ...] = (16, 6)
    scale: float = 1.0
    naive: Callable[[torch.nn.Sequential], torch.nn.Sequential] | None = None
    integer_inputs: int = 0  # > 0: integer inputs below this


def _replace(position: int, module: torch.nn.Module) -> Callable[[torch.nn.Sequential], torch.nn.Sequential]:
    def naive(port: torch.nn.Sequential) -> torch.nn.Sequential:
        port[position] = module
        return port

    return naive


def _train(position: int) -> Callable[[torch.nn.Sequential], torch.nn.Sequential]:
    def naive(port: torch.nn.Sequential) -> torch.nn.Sequential:
        port[position].train()
        return port

    return naive


def _copy_affine_into(position: int, module: torch.nn.Module) -> Callable[[torch.nn.Sequential], torch.nn.Sequential]:
    """The naive port: torch's module with its default hyper-parameters, holding the converted weights."""

    def naive(port: torch.nn.Sequential) -> torch.nn.Sequential:
        module.load_state_dict(port[position].state_dict())
        port[position] = module
        return port

    return naive


CASES = [
    Case("dense", lambda: [nn.Dense(6), jax.nn.relu, nn.Dense(6)], naive=lambda p: _untransposed(p, 2)),
    Case("dense-no-bias", lambda: [nn.Dense(5, use_bias=False)]),
    Case("gelu-tanh", lambda: [nn.Dense(8), nn.gelu], scale=3.0, naive=_replace(1, torch.nn.GELU())),
    Case("gelu-exact", lambda: [nn.Dense(8), functools.partial(nn.gelu, approximate=False)], scale=3.0),
    Case("tanh", lambda: [nn.Dense(8), nn.tanh]),
    Case("sigmoid", lambda: [nn.Dense(8), nn.sigmoid]),
    Case("silu", lambda: [nn.Dense(8), nn.silu]),
    Case("swish", lambda: [nn.Dense(8), nn.swish]),
    Case("elu", lambda: [nn.Dense(8), functools.partial(jax.nn.elu, alpha=0.5)], naive=_replace(1, torch.nn.ELU())),
    Case(
        "leaky_relu",
        lambda: [nn.Dense(8), functools.partial(jax.nn.leaky_relu, negative_slope=0.2)],
        naive=_replace(1, torch.nn.LeakyReLU()),
    ),
    Case("softplus", lambda: [nn.Dense(8), nn.softplus]),
    Case("selu", lambda: [nn.Dense(8), nn.selu]),
    Case("celu", lambda: [nn.Dense(8), functools.partial(jax.nn.celu, alpha=2.0)], naive=_replace(1, torch.nn.CELU())),
    Case("hard_tanh", lambda: [nn.Dense(8), nn.hard_tanh], scale=2.0),
    Case("softmax", lambda: [nn.Dense(5), nn.softmax], shape=(3, 4, 6), naive=_replace(1, torch.nn.Softmax())),
    Case(
        "log_softmax", lambda: [nn.Dense(5), nn.log_softmax], shape=(3, 4, 6), naive=_replace(1, torch.nn.LogSoftmax())
    ),
    Case("layernorm", lambda: [nn.LayerNorm()], scale=1e-3, naive=_copy_affine_into(0, torch.nn.LayerNorm(6))),
    Case("layernorm-no-bias", lambda: [nn.Dense(6), nn.LayerNorm(use_bias=False, epsilon=1e-3)]),
    Case("rmsnorm", lambda: [nn.RMSNorm()], scale=1e-3, naive=_copy_affine_into(0, torch.nn.RMSNorm(6))),
    Case(
        "groupnorm",
        lambda: [nn.Dense(8), nn.GroupNorm(num_groups=4)],
        scale=1e-3,
        naive=lambda p: _torch_groupnorm(p, 1),
    ),
    Case("groupnorm-conv", lambda: [nn.Conv(8, (3, 3)), nn.GroupNorm(num_groups=2, epsilon=1e-5)], shape=(2, 6, 6, 3)),
    Case("batchnorm", lambda: [nn.Dense(6), nn.BatchNorm(use_running_average=True)], naive=_train(1)),
    Case("dropout", lambda: [nn.Dense(6), nn.Dropout(0.5, deterministic=True), nn.Dense(3)], naive=_train(1)),
    Case("embed", lambda: [nn.Embed(10, 4), nn.Dense(3)], shape=(12,), integer_inputs=10),
    Case(
        "conv1d-same-stride2",
        lambda: [nn.Conv(4, (5,), strides=2, padding="SAME")],
        shape=(3, 12, 2),
        naive=lambda p: _symmetric(p, 0, 2),
    ),
    Case(
        "conv2d-same-stride2",
        lambda: [nn.Conv(4, (3, 3), strides=2, padding="SAME")],
        shape=(3, 8, 10, 2),
        naive=lambda p: _symmetric(p, 0, 1),
    ),
    Case(
        "avgpool-same",
        lambda: [
            nn.Conv(4, (3, 3)),
            functools.partial(nn.avg_pool, window_shape=(2, 2), strides=(2, 2), padding="SAME"),
        ],
        shape=(2, 7, 7, 3),
    ),
    Case(
        "avgpool-pad-not-counted",
        lambda: [
            nn.Conv(4, (3, 3)),
            functools.partial(
                nn.avg_pool, window_shape=(3, 3), strides=(2, 2), padding="SAME", count_include_pad=False
            ),
        ],
        shape=(2, 7, 6, 3),
    ),
    Case(
        "maxpool-1d",
        lambda: [nn.Conv(4, (3,)), functools.partial(nn.max_pool, window_shape=(3,), strides=(2,), padding="SAME")],
        shape=(3, 9, 2),
    ),
    Case("conv2d-valid-dilated", lambda: [nn.Conv(4, (3, 3), padding="VALID", kernel_dilation=2)], shape=(2, 9, 9, 3)),
    Case(
        "conv2d-explicit-groups",
        lambda: [nn.Conv(6, (3, 2), padding=((2, 0), (1, 1)), feature_group_count=3)],
        shape=(2, 7, 6, 3),
    ),
    Case(
        "cnn",
        lambda: [
            nn.Conv(4, (3, 3), strides=2, padding="SAME"),
            jax.nn.relu,
            nn.Conv(8, (3, 3)),
            jax.nn.relu,
            bridge.flatten,
            nn.Dense(5),
        ],
        shape=(4, 9, 9, 3),
    ),
    Case(
        "mlp-layernorm-gelu-dropout-batchnorm",
        lambda: [
            nn.Dense(16),
            nn.LayerNorm(),
            nn.gelu,
            nn.Dropout(0.1, deterministic=True),
            nn.Dense(16),
            nn.BatchNorm(use_running_average=True),
            jax.nn.relu,
            nn.Dense(4),
        ],
    ),
]


def _torch_groupnorm(port: torch.nn.Sequential, position: int) -> torch.nn.Sequential:
    """The naive port: torch's GroupNorm with its default eps 1e-5 (Flax: 1e-6)."""
    module = torch.nn.GroupNorm(port[position].num_groups, port[position].num_channels)
    module.load_state_dict(port[position].state_dict())
    port[position] = module
    return port


def _symmetric(port: torch.nn.Sequential, position: int, pad: int) -> torch.nn.Sequential:
    """The usual hand port: torch's symmetric padding=k//2 where Flax 'SAME' with stride 2 pads asymmetrically."""
    conv = port[position]
    conv.flax_padding = ((pad, pad),) * (conv.weight.ndim - 2)
    return port


def _untransposed(port: torch.nn.Sequential, position: int) -> torch.nn.Sequential:
    with torch.no_grad():
        port[position].weight.copy_(port[position].weight.T.clone())
    return port


def _inputs(case: Case, dtype: Any) -> np.ndarray:
    rng = np.random.default_rng(0)
    if case.integer_inputs:
        return rng.integers(0, case.integer_inputs, size=case.shape).astype(np.int32)
    return (rng.standard_normal(case.shape) * case.scale).astype(dtype)


def _build(case: Case, dtype: Any = np.float32) -> tuple[nn.Sequential, Any, np.ndarray]:
    """The model and variables with every leaf perturbed (Flax inits biases to 0 and scales to 1, hiding bugs)."""
    model = nn.Sequential(case.layers())
    x = _inputs(case, dtype)
    variables = model.init(jax.random.PRNGKey(0), x)
    rng = np.random.default_rng(1)

    def perturb(path: tuple[Any, ...], leaf: Any) -> Any:
        noise = 0.2 * rng.standard_normal(leaf.shape)
        value = (
            np.abs(np.asarray(leaf, np.float64)) + 0.5 + noise
            if path[-1].key == "var"
            else np.asarray(leaf, np.float64) + noise
        )
        return np.asarray(value, dtype)

    return model, jax.tree_util.tree_map_with_path(perturb, variables), x


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_converted_model_passes_the_checker_in_float32(case: Case) -> None:
    model, variables, x = _build(case)
    port = bridge.to_torch(model, variables)
    report = bridge.check_equivalence(model, variables, port, x)
    assert report.ok, str(report)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_converted_model_passes_the_checker_in_float64(case: Case) -> None:
    with jax.enable_x64(True):
        model, variables, x = _build(case, np.float64)
        port = bridge.to_torch(model, variables)
        assert all(p.dtype == torch.float64 for p in port.parameters())
        report = bridge.check_equivalence(model, variables, port, x)
    assert report.ok, str(report)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_round_trip_is_bit_exact(case: Case) -> None:
    model, variables, x = _build(case)
    port = bridge.to_torch(model, variables)
    back_model, back_variables = bridge.to_flax(port)
    for original, returned in zip(
        discover_chain(model, variables), discover_chain(back_model, back_variables), strict=True
    ):
        assert original.kind == returned.kind
        flat = jax.tree_util.tree_leaves_with_path(original.variables)
        back = dict(jax.tree_util.tree_leaves_with_path(returned.variables))
        for path, leaf in flat:
            np.testing.assert_array_equal(np.asarray(back[path]), np.asarray(leaf), err_msg=f"{original.where} {path}")
            assert np.asarray(back[path]).dtype == np.asarray(leaf).dtype
    again = bridge.to_torch(back_model, back_variables)
    for key, value in port.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    assert bridge.check_equivalence(back_model, back_variables, port, x).ok


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_torch_to_nnx_keeps_every_weight_and_passes_the_checker(case: Case) -> None:
    model, variables, x = _build(case)
    port = bridge.to_torch(model, variables)
    nnx_model = bridge.to_nnx(port)
    for original, returned in zip(discover_chain(model, variables), discover_chain(nnx_model), strict=True):
        for collection, arrays in original.variables.items():
            for name, array in arrays.items():
                np.testing.assert_array_equal(np.asarray(returned.variables[collection][name]), np.asarray(array))
    report = bridge.check_equivalence(nnx_model, None, port, x)
    assert report.ok, str(report)
    again = bridge.to_torch(nnx_model)
    for key, value in port.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


NAIVE = [c for c in CASES if c.naive is not None]


@pytest.mark.parametrize("case", NAIVE, ids=[c.name for c in NAIVE])
@pytest.mark.filterwarnings("ignore:Implicit dimension choice:UserWarning")
def test_the_naive_port_is_caught(case: Case) -> None:
    model, variables, x = _build(case)
    assert case.naive is not None
    port = case.naive(bridge.to_torch(model, variables))
    report = bridge.check_equivalence(model, variables, port, x, grads=False)
    assert not report.ok, str(report)
    assert report.first_divergence is not None
    assert report.first_divergence.hint is not None, str(report)
    position, fix = NAIVE_HINTS[case.name]
    assert report.first_divergence.index == position, str(report)
    assert fix in report.first_divergence.hint, report.first_divergence.hint


# Where each naive port is caught, and the fix its hint must name (the text a user types).
NAIVE_HINTS = {
    "dense": (2, "untransposed"),
    "gelu-tanh": (1, "use torch.nn.GELU(approximate='tanh')"),
    "elu": (1, "computes elu (alpha=1.0) where Flax applies elu (alpha=0.5): use torch.nn.ELU(alpha=0.5)"),
    "leaky_relu": (1, "use torch.nn.LeakyReLU(negative_slope=0.2)"),
    "celu": (1, "use torch.nn.CELU(alpha=2.0)"),
    "softmax": (1, "use torch.nn.Softmax(dim=-1)"),
    "log_softmax": (1, "use torch.nn.LogSoftmax(dim=-1)"),
    "layernorm": (0, "construct it with eps=1e-06, e.g. torch.nn.LayerNorm((6,), eps=1e-06"),
    "rmsnorm": (0, "construct it with eps=1e-06, e.g. torch.nn.RMSNorm((6,), eps=1e-06"),
    "groupnorm": (1, "construct it with eps=1e-06, e.g. torch.nn.GroupNorm(4, 8, eps=1e-06"),
    "batchnorm": (1, "torch BatchNorm1d is in training mode: call .eval()"),
    "dropout": (1, "torch Dropout is in training mode: call .eval()"),
    "conv1d-same-stride2": (0, "pad explicitly with functional.pad and padding=0"),
    "conv2d-same-stride2": (0, "pad explicitly with functional.pad and padding=0"),
}


def test_every_naive_port_has_an_expected_hint() -> None:
    assert set(NAIVE_HINTS) == {c.name for c in NAIVE}


def test_unknown_partial_keywords_and_lambdas_are_named() -> None:
    variables = nn.Sequential([nn.Dense(3)]).init(jax.random.PRNGKey(0), np.ones((1, 2), np.float32))
    model = nn.Sequential([nn.Dense(3), functools.partial(jax.nn.leaky_relu, slope=0.2)])
    with pytest.raises(
        bridge.LayerMismatchError, match=r"partial\(leaky_relu, \.\.\.\) binds slope.*it maps: negative_slope"
    ):
        bridge.to_torch(model, variables)


def test_torch_softmax_without_dim_is_refused_back_to_flax() -> None:
    with pytest.raises(bridge.LayerMismatchError, match="dim=None picks the axis by rank"):
        bridge.to_flax(torch.nn.Sequential(torch.nn.Softmax()))


def test_batchnorm_momentum_and_epsilon_are_translated() -> None:
    model = nn.Sequential([nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-3)])
    variables = model.init(jax.random.PRNGKey(0), np.ones((2, 4), np.float32))
    port = bridge.to_torch(model, variables)
    assert port[0].momentum == pytest.approx(0.1)
    assert port[0].eps == pytest.approx(1e-3)
    assert not port[0].training
    back, _ = bridge.to_flax(port)
    assert back.layers[0].momentum == pytest.approx(0.9)
    assert set(bridge.to_state_dict(model, variables)) == {"0.weight", "0.bias", "0.running_mean", "0.running_var"}


# One sample torch module per supported kind: a rule added without a sample fails the test below.
TORCH_SAMPLES: dict[type[torch.nn.Module], torch.nn.Module] = {
    torch.nn.Linear: torch.nn.Linear(2, 3),
    torch.nn.MultiheadAttention: torch.nn.MultiheadAttention(8, 2, batch_first=True),
    bridge.torch_layers.FlaxMaxPool: bridge.torch_layers.FlaxMaxPool((2, 2), (2, 2), "SAME"),
    bridge.torch_layers.FlaxAvgPool: bridge.torch_layers.FlaxAvgPool((3,), (2,), "VALID", count_include_pad=False),
    torch.nn.ReLU: torch.nn.ReLU(),
    torch.nn.GELU: torch.nn.GELU(),
    torch.nn.Tanh: torch.nn.Tanh(),
    torch.nn.Sigmoid: torch.nn.Sigmoid(),
    torch.nn.SiLU: torch.nn.SiLU(),
    torch.nn.ELU: torch.nn.ELU(),
    torch.nn.LeakyReLU: torch.nn.LeakyReLU(0.3),
    torch.nn.Softplus: torch.nn.Softplus(),
    torch.nn.SELU: torch.nn.SELU(),
    torch.nn.CELU: torch.nn.CELU(),
    torch.nn.Hardtanh: torch.nn.Hardtanh(),
    torch.nn.Softmax: torch.nn.Softmax(dim=-1),
    torch.nn.LogSoftmax: torch.nn.LogSoftmax(dim=-1),
    torch.nn.LayerNorm: torch.nn.LayerNorm(3),
    torch.nn.RMSNorm: torch.nn.RMSNorm(3, eps=1e-6),
    torch.nn.BatchNorm1d: torch.nn.BatchNorm1d(3),
    torch.nn.Dropout: torch.nn.Dropout(),
    torch.nn.Embedding: torch.nn.Embedding(4, 3),
    torch.nn.Flatten: torch.nn.Flatten(),
    bridge.torch_layers.ChannelsFirstFlatten: bridge.torch_layers.ChannelsFirstFlatten(),
    bridge.torch_layers.FlaxGroupNorm: bridge.torch_layers.FlaxGroupNorm(2, 4),
    bridge.torch_layers.FlaxConv1d: bridge.torch_layers.FlaxConv1d(2, 3, (3,), flax_padding="SAME"),
    bridge.torch_layers.FlaxConv2d: bridge.torch_layers.FlaxConv2d(
        2, 4, (3, 3), flax_padding=((1, 0), (0, 1)), groups=2
    ),
}


def test_the_symmetric_padding_mistake_is_named() -> None:
    case = next(c for c in CASES if c.name == "conv2d-same-stride2")
    model, variables, x = _build(case)
    assert case.naive is not None
    port = case.naive(bridge.to_torch(model, variables))
    report = bridge.check_equivalence(model, variables, port, x, grads=False)
    assert report.first_divergence is not None
    assert "torch pads symmetrically (1 on each side) where Flax 'SAME' with stride 2" in str(
        report.first_divergence.hint
    )


def test_channels_first_convolution_takes_nchw() -> None:
    conv = bridge.torch_layers.FlaxConv2d(3, 4, (3, 3), flax_padding="SAME", stride=2, channels_last=False)
    x = torch.randn(2, 3, 8, 8)
    nhwc = bridge.torch_layers.FlaxConv2d(3, 4, (3, 3), flax_padding="SAME", stride=2)
    nhwc.load_state_dict(conv.state_dict())
    torch.testing.assert_close(conv(x), nhwc(x.movedim(1, -1)).movedim(-1, 1))
    flax_model, variables = bridge.to_flax(torch.nn.Sequential(conv))  # Flax's conv: the same weights, NHWC
    flax_out = np.asarray(flax_model.apply(variables, x.movedim(1, -1).numpy()))
    np.testing.assert_allclose(flax_out, conv(x).detach().movedim(1, -1).numpy(), rtol=1e-5, atol=1e-6)


def test_unsupported_convolutions_are_refused_with_the_reason() -> None:
    model = nn.Sequential([nn.Conv(2, (3, 3), padding="CIRCULAR")])
    variables = model.init(jax.random.PRNGKey(0), np.ones((1, 5, 5, 1), np.float32))
    with pytest.raises(
        bridge.LayerMismatchError, match=r"layer 0 \(Conv at 'layers_0'\): padding='CIRCULAR' has no torch equivalent"
    ):
        bridge.to_torch(model, variables)


def test_every_rule_maps_its_torch_kinds_back_to_itself() -> None:
    for rule in bridge.rules.registered_rules():
        for torch_type in rule.torch_types:
            flax_layer = rule.make_flax(TORCH_SAMPLES[torch_type])
            assert bridge.rules.rule_for_flax(flax_layer, "sample") is rule, rule.kind


def test_layernorm_with_a_bias_and_no_scale_is_torchs_layernorm_with_a_weight_of_ones() -> None:
    model = nn.Sequential([nn.Dense(6), nn.LayerNorm(use_scale=False)])
    x = np.random.default_rng(2).standard_normal((8, 5)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    variables = jax.tree_util.tree_map(lambda a: a + 0.5, variables)  # a bias that is not zero
    port = bridge.to_torch(model, variables)
    assert torch.equal(port[1].weight, torch.ones(6))
    assert bridge.check_equivalence(model, variables, port, x).ok
    hand_made = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.LayerNorm(6, eps=1e-6))
    with torch.no_grad():
        hand_made[1].weight.normal_()
    bridge.load_into(model, variables, hand_made)
    assert torch.equal(hand_made[1].weight, torch.ones(6))
    np.testing.assert_array_equal(
        hand_made[1].bias.detach().numpy(), np.asarray(variables["params"]["layers_1"]["bias"])
    )
    assert bridge.check_equivalence(model, variables, hand_made, x).ok
    back_model, back_variables = bridge.to_flax(port)  # an equivalent Flax model: scale of ones
    np.testing.assert_array_equal(np.asarray(back_variables["params"]["layers_1"]["scale"]), np.ones(6, np.float32))
    assert bridge.check_equivalence(back_model, back_variables, port, x).ok
