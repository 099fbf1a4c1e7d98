"""Ports written the way others write them (the failure patterns Hugging Face's models showed): variables
outside rule-backed layers (a class token, a frozen position table), a residual added in place after a call,
same-shape layers called in another order, parameters nothing compares, and a final LayerNorm that zeroes
the gradient of a plain sum."""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import bridge
from bridge.check._outputs import projected_sum, sum_leaves

X = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)


class TokenBlock(nn.Module):
    """A class token and a position table (params of the model itself, no rule), a Dense, a residual, a
    LayerNorm; the position table's gradient is stopped (as Whisper's encoder positions are)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cls = self.param("cls_token", nn.initializers.normal(1.0), (1, 1, 4))
        pos = self.param("position", nn.initializers.normal(1.0), (1, 3, 4))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, 4)), x], axis=1) + jax.lax.stop_gradient(pos)
        return nn.LayerNorm(name="norm")(nn.Dense(4, name="fc")(x) + x)


class TorchTokenBlock(torch.nn.Module):
    """TokenBlock as a torch user writes it: the position table frozen, the residual added in place."""

    def __init__(self, extra: bool = False) -> None:
        super().__init__()
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 4))
        self.position = torch.nn.Parameter(torch.zeros(1, 3, 4), requires_grad=False)
        self.fc = torch.nn.Linear(4, 4)
        self.norm = torch.nn.LayerNorm(4, eps=1e-6)
        if extra:  # a parameter no Flax variable fills: nothing would compare it
            self.extra = torch.nn.Parameter(torch.zeros(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.position
        h = self.fc(x)
        h += x  # changes fc's recorded output in place
        return self.norm(h)


@pytest.fixture(scope="module")
def token_block() -> tuple[nn.Module, Any]:
    model = TokenBlock()
    variables = model.init(jax.random.PRNGKey(0), X)
    params = jax.tree_util.tree_map(lambda a: a + 0.1, variables["params"])  # a LayerNorm scale that is not 1
    return model, {"params": params}


def test_load_into_fills_variables_outside_rule_backed_layers(token_block: tuple[nn.Module, Any]) -> None:
    model, variables = token_block
    port = bridge.load_into(model, variables, TorchTokenBlock(), inputs=X)
    np.testing.assert_array_equal(port.cls_token.detach().numpy(), variables["params"]["cls_token"])
    np.testing.assert_array_equal(port.position.detach().numpy(), variables["params"]["position"])
    report = bridge.check_equivalence(model, variables, port, X)
    assert report.ok, str(report)
    names = [g.name for g in report.gradients]
    assert "cls_token <-> cls_token" in names  # compared, not skipped
    assert "position <-> position" in names  # frozen in torch, stopped in Flax: both zero


def test_a_port_parameter_nothing_compares_makes_the_check_fail(token_block: tuple[nn.Module, Any]) -> None:
    model, variables = token_block
    port = TorchTokenBlock(extra=True)
    with pytest.raises(bridge.LayerMismatchError, match=r"torch \(port\) holds tensors no Flax variable fills: extra"):
        bridge.load_into(model, variables, port, inputs=X)
    assert not port.cls_token.detach().any()  # the refused load wrote nothing
    loaded = bridge.load_into(model, variables, TorchTokenBlock(), inputs=X)  # a port without it loads
    port.load_state_dict({**loaded.state_dict(), "extra": torch.zeros(5)})
    report = bridge.check_equivalence(model, variables, port, X)
    assert not report.ok
    assert any("unchecked" in p and "extra" in p for p in report.problems)
    assert report.settings["unchecked_torch"] == ["extra"]
    assert bridge.check_equivalence(model, variables, port, X, allow_unchecked=True).ok
    buffered = bridge.load_into(model, variables, TorchTokenBlock(), inputs=X)
    buffered.register_buffer("table", torch.ones(3))  # a constant of the port's own: judged through the outputs
    report = bridge.check_equivalence(model, variables, buffered, X)
    assert report.ok, str(report)
    assert report.settings["unfilled_torch_buffers"] == ["table"]


class _LinearWithSpare(torch.nn.Module):
    """A Linear of the user's own holding one parameter more, which its forward never reads."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.spare = torch.nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


def test_a_chain_position_holding_a_parameter_nothing_compares_fails_as_a_tree_would() -> None:
    """Chains and trees alike: a position's module holding a tensor beyond its rule's is unchecked, listed,
    and NOT EQUIVALENT unless allowed; load_into refuses to leave it unfilled."""
    model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    exact = bridge.to_torch(model, variables)
    port = torch.nn.Sequential(exact[0], exact[1], _LinearWithSpare(exact[2]))
    report = bridge.check_equivalence(model, variables, port, x)
    assert not report.ok
    assert report.settings["unchecked_torch"] == ["2.spare"]
    assert any("unchecked" in p and "2.spare" in p for p in report.problems), report.problems
    assert all(row.ok for row in report.layers)
    assert bridge.check_equivalence(model, variables, port, x, allow_unchecked=True).ok
    with pytest.raises(bridge.LayerMismatchError, match=r"torch 2: torch tensors no Flax variable fills: spare"):
        bridge.load_into(model, variables, port)


def test_a_layer_the_port_does_not_port_is_not_filled_by_shape(token_block: tuple[nn.Module, Any]) -> None:
    model, variables = token_block
    port = bridge.load_into(model, variables, TorchTokenBlock(), inputs=X)
    with torch.no_grad():
        port.cls_token.add_(1.0)
    report = bridge.check_equivalence(model, variables, port, X)
    assert not report.ok


class TwoPairs(nn.Module):
    """Two groups of same-shape Dense layers (4 -> 4 and 4 -> 8), each group's layers called a then b."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = 2.0 * nn.Dense(4, name="a")(x) + nn.Dense(4, name="b")(x)
        return 3.0 * nn.Dense(8, name="c")(y) + nn.Dense(8, name="d")(y)


class TorchTwoPairs(torch.nn.Module):
    """TwoPairs with names of its own (neither values nor paths tell same-shape layers apart in a fresh port),
    the second group called in the other order (d's twin before c's)."""

    PORTS: ClassVar[dict[str, str]] = {"a": "one", "b": "two", "c": "three", "d": "four"}

    def __init__(self) -> None:
        super().__init__()
        self.one, self.two = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        self.three, self.four = torch.nn.Linear(4, 8), torch.nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = 2.0 * self.one(x) + self.two(x)
        d = self.four(y)
        return 3.0 * self.three(y) + d


def _by_hand(model_params: Any) -> TorchTwoPairs:
    port = TorchTwoPairs()
    with torch.no_grad():
        for flax_name, torch_name in TorchTwoPairs.PORTS.items():
            linear, params = getattr(port, torch_name), model_params[flax_name]
            linear.weight.copy_(torch.from_numpy(np.array(params["kernel"]).T))
            linear.bias.copy_(torch.from_numpy(np.array(params["bias"])))
    return port


def test_same_shape_layers_called_in_another_order() -> None:
    x = X[:, 0]
    model = TwoPairs()
    variables = model.init(jax.random.PRNGKey(1), x)
    # a correctly loaded port: each group's layers are told apart by the values they hold (the second group too)
    report = bridge.check_equivalence(model, variables, _by_hand(variables["params"]), x)
    assert report.ok, str(report)
    # a fresh port: only call order tells c's twin from d's (both fed y), and it is wrong: the load keeps the
    # assignment under which the port reproduces the Flax output
    with pytest.warns(bridge.ReassignedWarning, match="Flax c -> torch three; Flax d -> torch four"):
        port = bridge.load_into(model, variables, TorchTwoPairs(), inputs=x)
    want = _by_hand(variables["params"]).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in port.state_dict().items())
    assert bridge.check_equivalence(model, variables, port, x).ok


def test_default_loss_has_a_gradient_through_a_final_layernorm() -> None:
    norm = nn.LayerNorm()
    x = jnp.asarray(X)
    variables = norm.init(jax.random.PRNGKey(0), x)
    plain = jax.grad(lambda inp: sum_leaves(norm.apply(variables, inp)))(x)
    projected = jax.grad(lambda inp: projected_sum(norm.apply(variables, inp)))(x)
    assert float(jnp.abs(plain).max()) < 1e-5  # the plain sum: rounding noise only
    assert float(jnp.abs(projected).max()) > 1e-2
    # the same weights on both sides: torch's loss of the same values is the same number
    y = np.array(norm.apply(variables, x))
    np.testing.assert_allclose(
        float(projected_sum(torch.from_numpy(y))), float(projected_sum(jnp.asarray(y))), rtol=1e-5
    )


@pytest.mark.slow
def test_a_forward_that_uses_layers_swapped_is_loaded_to_compute_the_flax_output() -> None:
    """SeparateAttention(mistake="swapped") computes q and k in order, then uses them swapped: the load gives
    query's weights to k_proj (the port then computes Flax's function) and says so; by names, the check finds it."""
    from tree_models import SEPARATE_BY_NAME, TorchSeparateBlock, TransformerBlock

    x = np.random.default_rng(2).standard_normal((2, 5, 32)).astype(np.float32)
    model = TransformerBlock()
    variables = model.init(jax.random.PRNGKey(0), x)
    with pytest.warns(bridge.ReassignedWarning, match="query -> torch attention.k_proj"):
        port = bridge.load_into(model, variables, TorchSeparateBlock(mistake="swapped").eval(), inputs=x)
    assert bridge.check_equivalence(model, variables, port, x, grads=False).ok
    by_name = bridge.load_into(
        model, variables, TorchSeparateBlock(mistake="swapped").eval(), inputs=x, mapping=SEPARATE_BY_NAME
    )
    assert not bridge.check_equivalence(model, variables, by_name, x, grads=False).ok


class SharedTwice(nn.Module):
    """One Dense called twice (a shared final norm, ALBERT's shared layer): two calls, one set of weights."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shared = nn.Dense(4, name="shared")
        return shared(jnp.tanh(shared(x)))


class TorchSharedTwice(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(torch.tanh(self.shared(x)))


def test_a_module_called_twice_pairs_call_by_call() -> None:
    x = X[:, 0]
    model = SharedTwice()
    variables = model.init(jax.random.PRNGKey(3), x)
    port = bridge.load_into(model, variables, TorchSharedTwice(), inputs=x)
    report = bridge.check_equivalence(model, variables, port, x)
    assert report.ok, str(report)
    assert [row.isolated.ok for row in report.layers if row.kind == "Dense"] == [True, True]


class ScaleNorm(nn.Module):
    """A norm of the model's own (no rule: T5's LayerNorm, Llama's RMSNorm): x / rms(x) * weight."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],))
        return x * jax.lax.rsqrt(jnp.mean(x**2, axis=-1, keepdims=True) + 1e-6) * weight


class FeedForward(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(nn.Dense(8, name="wi")(ScaleNorm(name="norm")(x)))
        return x + nn.Dense(4, name="wo")(h)


class Stack(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return FeedForward(name="ff")(FeedForward(name="ff0")(x))


class TorchFeedForward(torch.nn.Module):
    """The block as T5's port writes it: the norm's weight held by the block and computed inline, the two
    Linears in a module of their own (the Flax block's layers lie in a smaller torch subtree than the block)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm_weight = torch.nn.Parameter(torch.ones(4))
        self.dense = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.norm_weight
        return x + self.dense(normed)


class TorchStack(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ff0, self.ff = TorchFeedForward(), TorchFeedForward()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(self.ff0(x))


def test_a_block_cut_differently_never_decides_the_verdict_alone() -> None:
    model = Stack()
    variables = model.init(jax.random.PRNGKey(4), X)
    params = jax.tree_util.tree_map(lambda a: a + 0.1, variables["params"])
    port = bridge.load_into(model, {"params": params}, TorchStack(), inputs=X)
    np.testing.assert_array_equal(port.ff.norm_weight.detach().numpy(), params["ff"]["norm"]["weight"])
    report = bridge.check_equivalence(model, {"params": params}, port, X)
    assert report.ok, str(report)
    assert report.settings["composites_not_judged"]  # ff/norm+dense+residual paired with ff.dense alone
    assert "blocks not judged on their own" in str(report)
    with torch.no_grad():
        port.ff.norm_weight.mul_(1.01)  # the norm of the port's own: caught through the layers and the output
    assert not bridge.check_equivalence(model, {"params": params}, port, X).ok


def test_outputs_broadcast_by_one_side_compare_as_the_same_values() -> None:
    from bridge.check._outputs import in_flax_layout

    shared = torch.arange(12.0).reshape(1, 3, 4)
    laid_out = in_flax_layout(shared, np.zeros((2, 3, 4)), True)
    assert tuple(laid_out.shape) == (2, 3, 4)
    assert torch.equal(laid_out[1], shared[0])


@pytest.mark.slow
def test_a_port_fed_channels_first_pixels_is_read_channels_first() -> None:
    from tree_models import CNN, TorchCNN

    x = np.random.default_rng(5).standard_normal((2, 28, 28, 1)).astype(np.float32)
    model = CNN()
    variables = model.init(jax.random.PRNGKey(0), x)
    nchw = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    port = bridge.load_into(model, variables, TorchCNN().eval(), inputs=x, torch_inputs=nchw)
    report = bridge.check_equivalence(model, variables, port, x, torch_inputs=nchw)  # no channels_last=False
    assert report.ok, str(report)


class TorchRMSNorm(torch.nn.Module):
    """An RMSNorm class of the port's own (as Llama's): no rule claims it."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class NormThenDense(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(4, name="dense")(ScaleNorm(name="norm")(x))


class TorchNormThenDense(torch.nn.Module):
    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm, self.dense = TorchRMSNorm(4, eps), torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.norm(x))


def test_a_mistake_in_a_module_without_a_rule_is_located_at_it() -> None:
    model = NormThenDense()
    variables = model.init(jax.random.PRNGKey(6), X)
    port = bridge.load_into(model, variables, TorchNormThenDense(eps=0.1), inputs=X)  # the wrong epsilon
    report = bridge.check_equivalence(model, variables, port, X)
    assert not report.ok
    assert report.first_divergence is not None
    assert (report.first_divergence.flax_path, report.first_divergence.torch_name) == ("norm", "norm"), str(report)
    right = bridge.load_into(model, variables, TorchNormThenDense(), inputs=X)
    assert bridge.check_equivalence(model, variables, right, X).ok


class WeightNormConv(nn.Module):
    """A weight-normed conv written as Hugging Face's Wav2Vec2 writes it: the kernel is computed at run time
    from ``weight_v`` and ``weight_g`` and a bound ``nn.Conv`` is applied to it with ``.apply``."""

    features: int = 6

    def setup(self) -> None:
        self.conv = nn.Conv(self.features, kernel_size=(3,), padding="VALID")
        self.weight_v = self.param("weight_v", nn.initializers.normal(1.0), (self.features, 4, 3))
        self.weight_g = self.param("weight_g", nn.initializers.uniform(2.0), (1, 1, 3))
        self.bias = self.param("bias", nn.initializers.normal(1.0), (self.features,))

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.weight_v / jnp.linalg.norm(self.weight_v, axis=(0, 1))[None, None, :] * self.weight_g
        x = jnp.pad(x, ((0, 0), (1, 1), (0, 0)))
        return self.conv.apply({"params": {"kernel": kernel.T, "bias": self.bias}}, x)


class WeightNormNet(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(3, name="head")(nn.gelu(WeightNormConv(name="pos_conv")(x)))


class TorchWeightNormNet(torch.nn.Module):
    """The same as a torch user writes it: ``weight_norm`` parametrisation over the kernel axis, channels first."""

    def __init__(self) -> None:
        super().__init__()
        conv = torch.nn.Conv1d(4, 6, kernel_size=3, padding=1)
        self.pos_conv = torch.nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        return self.head(torch.nn.functional.gelu(h, approximate="tanh"))


@pytest.fixture(scope="module")
def weight_norm_net() -> tuple[nn.Module, Any, np.ndarray]:
    x = np.random.default_rng(7).standard_normal((2, 5, 4)).astype(np.float32)
    model = WeightNormNet()
    return model, model.init(jax.random.PRNGKey(7), x), x


def test_a_weight_normed_conv_applied_to_run_time_weights_converts(weight_norm_net: Any) -> None:
    model, variables, x = weight_norm_net
    port = bridge.to_torch(model, variables, x, check=True)
    x3 = np.random.default_rng(8).standard_normal((3, 5, 4)).astype(np.float32)  # another batch size
    got = port(torch.from_numpy(x3)).detach().numpy()
    np.testing.assert_allclose(got, np.asarray(model.apply(variables, x3)), rtol=1e-5, atol=1e-5)


def test_a_weight_normed_conv_loads_into_torchs_parametrisation(weight_norm_net: Any) -> None:
    model, variables, x = weight_norm_net
    port = bridge.load_into(model, variables, TorchWeightNormNet(), inputs=x)
    held = variables["params"]["pos_conv"]
    weight = port.pos_conv.parametrizations.weight
    np.testing.assert_array_equal(weight.original0.detach().numpy(), held["weight_g"])
    np.testing.assert_array_equal(weight.original1.detach().numpy(), held["weight_v"])
    np.testing.assert_array_equal(port.pos_conv.bias.detach().numpy(), held["bias"])
    report = bridge.check_equivalence(model, variables, port, x)
    assert report.ok, str(report)
    names = [g.name for g in report.gradients]
    assert "pos_conv/weight_g <-> pos_conv.parametrizations.weight.original0" in names


def test_a_weight_normed_conv_with_the_magnitudes_reversed_fails_there(weight_norm_net: Any) -> None:
    model, variables, x = weight_norm_net
    port = bridge.load_into(model, variables, TorchWeightNormNet(), inputs=x)
    with torch.no_grad():
        g = port.pos_conv.parametrizations.weight.original0
        g.copy_(g.flip(-1))  # a plausible porting slip: the per-tap magnitudes in the wrong order
    report = bridge.check_equivalence(model, variables, port, x)
    assert not report.ok
    assert report.first_divergence is not None
    assert report.first_divergence.flax_path.startswith("pos_conv"), str(report)


class ScoreAttention(nn.Module):
    """Attention with a learned bias added to its scores (as T5's relative position bias): no rule claims it."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = (nn.Dense(4, use_bias=False, name=name)(x) for name in "qkv")
        bias = self.param("score_bias", nn.initializers.normal(1.0), (x.shape[1], x.shape[1]))
        weights = jax.nn.softmax(q @ k.swapaxes(-1, -2) + bias, axis=-1)
        return nn.Dense(4, use_bias=False, name="o")(weights @ v)


class NormedAttentionStack(nn.Module):
    """Two T5-style layers: a norm of the model's own, the attention, a residual."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(2):
            x = NormedAttentionLayer(name=f"layer_{i}")(x)
        return x


class NormedAttentionLayer(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x + ScoreAttention(name="attention")(ScaleNorm(name="norm")(x))


class TorchScoreAttention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(4, 4, bias=False) for _ in range(4))
        self.score_bias = torch.nn.Parameter(torch.zeros(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(-1, -2) + self.score_bias
        return self.o(torch.softmax(scores, dim=-1) @ self.v(x))


class TorchNormedAttentionLayer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.attention = TorchRMSNorm(4), TorchScoreAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attention(self.norm(x))


def test_a_swap_inside_an_attention_without_a_rule_is_named_at_it() -> None:
    model = NormedAttentionStack()
    variables = model.init(jax.random.PRNGKey(9), X)
    port = bridge.load_into(
        model, variables, torch.nn.Sequential(TorchNormedAttentionLayer(), TorchNormedAttentionLayer()), inputs=X
    )
    report = bridge.check_equivalence(model, variables, port, X)
    assert report.ok, str(report)
    # a block pairs with the torch block that holds its norm too, not with its attention alone
    assert {row.flax_path: row.torch_name for row in report.layers}["layer_0"] == "0"
    attention = port[0].attention
    with torch.no_grad():
        saved = attention.q.weight.clone()
        attention.q.weight.copy_(attention.k.weight)
        attention.k.weight.copy_(saved)
    report = bridge.check_equivalence(model, variables, port, X)
    assert not report.ok
    first = report.first_divergence
    assert first is not None
    assert (first.flax_path, first.torch_name) == ("layer_0/attention", "0.attention"), str(report)
    assert first.hint is not None
    assert "k and q are swapped in the port" in first.hint, str(report)


def test_a_weight_swapped_between_two_layers_with_their_biases_in_place_is_named() -> None:
    x = X[:, 0]
    model = TwoPairs()
    rng = np.random.default_rng(12)  # biases that differ (zero-initialised ones would still pair by value)
    params = jax.tree.map(
        lambda a: a + rng.normal(size=a.shape).astype(np.float32), model.init(jax.random.PRNGKey(1), x)
    )
    variables = {"params": params["params"]}
    port = _by_hand(variables["params"])
    with torch.no_grad():
        saved = port.one.weight.clone()
        port.one.weight.copy_(port.two.weight)
        port.two.weight.copy_(saved)
    report = bridge.check_equivalence(model, variables, port, x)
    first = report.first_divergence
    assert first is not None
    assert (first.flax_path, first.torch_name) == ("a", "one"), str(report)
    assert first.hint is not None
    assert "one.weight holds the values of Flax b, not those of a" in first.hint, str(report)


class OwnConv1D(nn.Module):
    """GPT-2's Conv1D as a Flax module of the model's own: a kernel stored (in, out), no rule claims it."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.normal(1.0), (x.shape[-1], 4))
        return x @ kernel + self.param("bias", nn.initializers.normal(1.0), (4,))


class TorchConv1D(torch.nn.Module):
    """Hugging Face's Conv1D: ``weight`` stored (in, out), unlike ``nn.Linear``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight, self.bias = torch.nn.Parameter(torch.zeros(4, 4)), torch.nn.Parameter(torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class ConvThenDense(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(4, name="dense")(OwnConv1D(name="proj")(x))


def test_a_module_without_a_rule_is_repaired_by_trying_the_change_that_explains_it() -> None:
    model = ConvThenDense()
    variables = model.init(jax.random.PRNGKey(10), X)
    port = bridge.load_into(model, variables, torch.nn.Sequential(TorchConv1D(), torch.nn.Linear(4, 4)), inputs=X)
    assert bridge.check_equivalence(model, variables, port, X).ok
    with torch.no_grad():
        port[0].weight.copy_(port[0].weight.T.clone())
    first = bridge.check_equivalence(model, variables, port, X).first_divergence
    assert first is not None
    assert first.torch_name == "0"
    assert first.hint is not None
    assert first.hint.startswith("torch 0.weight holds the Flax values transposed"), first.hint


def test_a_wrong_epsilon_in_a_norm_of_the_ports_own_is_named_with_the_one_that_fits() -> None:
    model = NormThenDense()
    variables = model.init(jax.random.PRNGKey(6), X)
    port = bridge.load_into(model, variables, TorchNormThenDense(eps=0.1), inputs=X)
    first = bridge.check_equivalence(model, variables, port, X).first_divergence
    assert first is not None
    assert first.hint is not None
    assert first.hint.startswith("torch norm uses eps=0.1; with eps"), first.hint
    assert "1e-06" in first.hint  # among the epsilons that reproduce Flax's output (the others are too close to tell)
    assert "1e-05" not in first.hint


class PatchEncoder(nn.Module):
    """ViT's shape: patches of an NHWC image by a strided conv, then a LayerNorm over (batch, tokens, features)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(8, kernel_size=(2, 2), strides=(2, 2), name="patch")(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        return nn.Dense(4, name="head")(nn.LayerNorm(epsilon=1e-12, name="norm")(x))


class TorchPatchEncoder(torch.nn.Module):
    """The same as Hugging Face writes it: fed NCHW pixels, its tokens (batch, tokens, features) as Flax's."""

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 8, kernel_size=2, stride=2)
        self.norm, self.head = torch.nn.LayerNorm(8, eps=eps), torch.nn.Linear(8, 4)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.patch(pixels).flatten(2).transpose(1, 2)))


def test_a_norm_after_channels_first_pixels_is_rerun_alone_in_its_own_layout() -> None:
    image = np.random.default_rng(11).standard_normal((2, 4, 4, 3)).astype(np.float32)
    model = PatchEncoder()
    variables = model.init(jax.random.PRNGKey(11), image)
    pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
    port = bridge.load_into(model, variables, TorchPatchEncoder(eps=0.1), inputs=image, torch_inputs=pixels)
    report = bridge.check_equivalence(model, variables, port, image, torch_inputs=pixels)
    first = report.first_divergence
    assert first is not None
    assert (first.torch_name, first.mode) == ("norm", "isolated"), str(report)
    assert first.hint is not None
    assert "eps=1e-12, e.g. torch.nn.LayerNorm((8,), eps=1e-12" in first.hint, first.hint


class ConvNorm(nn.Module):
    """A BatchNorm told to use its running statistics per call (as Hugging Face's ResNet: ``deterministic``)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.BatchNorm(name="norm")(nn.Conv(4, (3, 3), name="conv")(x), use_running_average=True)


class TorchConvNorm(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4, eps=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def test_a_batchnorm_given_its_mode_per_call_gets_the_epsilon_hint() -> None:
    image = np.random.default_rng(13).standard_normal((2, 5, 5, 3)).astype(np.float32)
    model = ConvNorm()
    variables = model.init(jax.random.PRNGKey(13), image)
    pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
    port = bridge.load_into(model, variables, TorchConvNorm().eval(), inputs=image, torch_inputs=pixels)
    first = bridge.check_equivalence(model, variables, port, image, torch_inputs=pixels).first_divergence
    assert first is not None
    assert first.torch_name == "norm"
    assert first.hint is not None
    assert "construct it with eps=1e-05, e.g. torch.nn.BatchNorm2d(4, eps=1e-05" in first.hint, first.hint


class Embedded(nn.Module):
    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        return nn.Dense(3, name="head")(nn.Embed(10, 4, name="tokens")(ids))


class TorchEmbedded(torch.nn.Module):
    """Embedded as torch users write it for text: the pad id's row excluded from training (``padding_idx``)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = torch.nn.Embedding(10, 4, padding_idx=0)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(ids))


@pytest.mark.parametrize("pad_in_inputs", [True, False])
def test_an_embedding_with_padding_idx_is_named_when_the_pad_id_is_fed(pad_in_inputs: bool) -> None:
    model = Embedded()
    ids = np.array([[0, 3, 5], [2, 0, 9]] if pad_in_inputs else [[1, 3, 5], [2, 4, 9]], np.int32)
    variables = model.init(jax.random.PRNGKey(0), ids)
    port = TorchEmbedded()
    bridge.load_into(model, variables, port, inputs=ids)
    report = bridge.check_equivalence(model, variables, port, ids, torch_inputs=torch.from_numpy(ids.astype(np.int64)))
    assert report.ok is not pad_in_inputs  # the forward pass matches either way; row 0's gradient does not
    if pad_in_inputs:
        assert report.first_divergence is not None
        assert report.first_divergence.kind.startswith("Embed")
        assert "padding_idx=0" in (report.first_divergence.hint or "")
