"""No false alarm on a correct port, whatever order it sums in: the checker's tolerances accept ports whose
Dense, Conv and LayerNorm layers compute in float64 then round, sum left to right or right to left
without FMA, pairwise, in a random order of the K terms, blocked with the bias in the accumulator, or
with torch's kernel on one thread. Each comparison goes through the checker's own bounds and comparison
(its ``error_bound`` and ``compare``), and whole ports through ``check_equivalence`` with gradients.

The tests assert err/tol <= 1 (the verdict); benchmarks/false_alarms.py runs 20,000+ cases per dtype and
reports the largest err/tol (0.34 at most measured, so other machines keep a margin of about 3x).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from summation_orders import (
    BF16,
    ORDERS,
    DenseCases,
    affine,
    dense_bound,
    flax_dense_outputs,
    layer_norm,
    torch_module,
    worst_ratios,
)

import bridge
from bridge._numerics import Precision
from bridge.check._compare import compare
from bridge.rules import BoundInputs
from bridge.rules.conv import ConvRule
from bridge.rules.normalization import LayerNormRule

DTYPES = [np.dtype(np.float32), np.dtype(np.float64), BF16, np.dtype(np.float16)]
CASES_PER_EXAMPLE = 6


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(
    k=st.one_of(st.integers(1, 16), st.integers(17, 4096)),
    dtype=st.sampled_from(DTYPES),
    x_exponent=st.floats(-3.0, 3.0),
    bias_scale=st.sampled_from([None, 1.0, 1e3]),
    cancel=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_dense_summed_in_any_order_is_equivalent(
    k: int, dtype: np.dtype, x_exponent: float, bias_scale: float | None, cancel: bool, seed: int
) -> None:
    """80 examples x 6 layers x 9 implementations: about 4,300 layer cases in every CI run."""
    x_scale = 10.0**x_exponent
    if dtype == np.float16:
        x_scale = min(x_scale, 10.0)  # float16 overflows at 65504
    cases = DenseCases(
        k,
        cases=CASES_PER_EXAMPLE,
        rows=3,
        n=4,
        dtype=dtype,
        x_scale=x_scale,
        bias_scale=None if bias_scale is None else min(bias_scale, 100.0 if dtype == np.float16 else bias_scale),
        cancel=cancel,
        seed=seed,
    )
    flax_y = flax_dense_outputs(cases)
    tolerance = dense_bound(cases, flax_y)
    for order in ORDERS:
        ratios = worst_ratios(flax_y, affine(cases.x, cases.kernel, cases.bias, order, seed=seed), tolerance)
        assert ratios.max() <= 1.0, f"{order}: err/tol {ratios.max():.3g} (K={k}, {dtype.name})"


@pytest.mark.parametrize("k", [64, 512, 4096])
def test_a_relative_change_of_1e_4_of_the_weights_is_caught(k: int) -> None:
    """The power that the tolerance keeps: ``W + dW`` with ``||dW|| = 1e-4 ||W||`` fails the bound, for
    the same inputs and a correct kernel (torch's), in every case; ``dW = 0`` passes."""
    cases = DenseCases(k, cases=4, rows=32, n=64, dtype=np.float32, x_scale=1.0, bias_scale=1.0, cancel=False, seed=k)
    flax_y = flax_dense_outputs(cases)
    tolerance = dense_bound(cases, flax_y)
    rng = np.random.default_rng(k)
    direction = rng.standard_normal(cases.kernel.shape)
    scale = np.linalg.norm(cases.kernel.astype(np.float64), axis=(1, 2)) / np.linalg.norm(direction, axis=(1, 2))
    changed = (cases.kernel + 1e-4 * scale[:, None, None] * direction).astype(np.float32)
    assert worst_ratios(flax_y, affine(cases.x, cases.kernel, cases.bias, "torch_threads"), tolerance).max() <= 1
    caught = worst_ratios(flax_y, affine(cases.x, changed, cases.bias, "torch_threads"), tolerance)
    assert caught.min() > 1.0, caught


@pytest.mark.parametrize("order", ORDERS)
def test_a_bias_that_cancels_a_coherent_sum_is_one_more_term(order: str) -> None:
    """Positive terms summing to about K while the bias removes it: every partial sum of a kernel that starts
    from the bias is as large as the bias, so the bias must count in the bound, not only the output."""
    rng = np.random.default_rng(5)
    k = 4096
    cases = DenseCases(k, cases=2, rows=4, n=3, dtype=np.float32, x_scale=1.0, bias_scale=1.0, cancel=False, seed=5)
    cases.x = np.abs(cases.x).astype(np.float32)
    cases.kernel = np.abs(cases.kernel).astype(np.float32)
    sums = np.einsum("crk,ckn->crn", cases.x.astype(np.float64), cases.kernel.astype(np.float64))
    cases.bias = (-sums[:, 0, :] * (1 + 1e-3 * rng.standard_normal((2, 3)))).astype(np.float32)
    flax_y = flax_dense_outputs(cases)
    tolerance = dense_bound(cases, flax_y)
    ratios = worst_ratios(flax_y, affine(cases.x, cases.kernel, cases.bias, order, seed=1), tolerance)
    assert ratios.max() <= 1.0, ratios


def _patches(x: np.ndarray, kernel_size: tuple[int, int], stride: int) -> np.ndarray:
    """im2col of a VALID channels-last convolution: ``(N, OH, OW, kh * kw * C)`` in HWIO's order."""
    windows = np.lib.stride_tricks.sliding_window_view(x, kernel_size, axis=(1, 2))[:, ::stride, ::stride]
    n, oh, ow, c, kh, kw = windows.shape
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(n, oh, ow, kh * kw * c)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("order", ORDERS)
def test_conv_computed_as_a_matmul_in_any_order_is_equivalent(order: str, dtype: np.dtype) -> None:
    rng = np.random.default_rng(7)
    layer = nn.Conv(5, (3, 3), strides=2, padding="VALID", dtype=dtype, param_dtype=dtype)
    x = (rng.standard_normal((2, 9, 9, 16)) * 3.0).astype(dtype)
    kernel = (rng.standard_normal((3, 3, 16, 5)) / 12.0).astype(dtype)
    bias = (rng.standard_normal(5) * 30.0).astype(dtype)  # large next to the sums
    variables = {"params": {"kernel": kernel, "bias": bias}}
    with jax.enable_x64(dtype == np.float64):
        flax_y = np.asarray(layer.apply(variables, x))
    ours = affine(_patches(x, (3, 3), 2), kernel.reshape(-1, 5), bias, order, seed=3)
    x64 = x.astype(np.float64)
    bound = BoundInputs(x64, flax_y.astype(np.float64), np.zeros_like(x64), Precision.of(dtype))
    tolerance = ConvRule().error_bound(layer, variables, bound)
    result = compare(flax_y.astype(np.float64), ours.astype(np.float64), tolerance)
    assert result.ok, result


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("offset", [0.0, 30.0], ids=["centred", "large-mean"])
def test_layernorm_with_statistics_summed_in_any_order_is_equivalent(
    order: str, dtype: np.dtype, offset: float
) -> None:
    rng = np.random.default_rng(11)
    width = 384
    layer = nn.LayerNorm(dtype=dtype, param_dtype=dtype)
    x = (rng.standard_normal((8, width)) + offset).astype(dtype)
    scale = (1.0 + rng.standard_normal(width) * 0.1).astype(dtype)
    bias = (rng.standard_normal(width) * 0.1).astype(dtype)
    variables = {"params": {"scale": scale, "bias": bias}}
    with jax.enable_x64(dtype == np.float64):
        flax_y = np.asarray(layer.apply(variables, x))
    ours = layer_norm(x, scale, bias, 1e-6, order, seed=5)
    x64 = x.astype(np.float64)
    bound = BoundInputs(x64, flax_y.astype(np.float64), np.zeros_like(x64), Precision.of(dtype))
    tolerance = LayerNormRule().error_bound(layer, variables, bound)
    result = compare(flax_y.astype(np.float64), ours.astype(np.float64), tolerance)
    assert result.ok, result


PORT_ORDERS = ["wide", "left_to_right", "right_to_left", "pairwise", "random_order"]


@pytest.mark.parametrize("order", PORT_ORDERS)
def test_whole_ports_summing_in_another_order_pass_with_gradients(order: str) -> None:
    """check_equivalence end to end, isolated and on every gradient (whose torch side is autograd through
    the reordered sums); the same port with one weight matrix changed by 1e-4 of its norm fails."""
    model = nn.Sequential([nn.Dense(96), jax.nn.relu, nn.Dense(48), jax.nn.tanh, nn.Dense(5)])
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 200)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(1), x)
    variables = jax.tree_util.tree_map(lambda a: a + 0.3 * rng.standard_normal(a.shape).astype(a.dtype), variables)
    port = bridge.to_torch(model, variables)
    linear = torch_module(order, "Linear")
    for position in (0, 2, 4):
        old = port[position]
        new = linear(old.in_features, old.out_features)
        new.load_state_dict(old.state_dict())
        port[position] = new
    report = bridge.check_equivalence(model, variables, port, x)
    assert report.ok, str(report)
    assert report.gradients, "gradients were compared"
    with torch.no_grad():
        weight = port[2].weight
        direction = torch.from_numpy(rng.standard_normal(tuple(weight.shape)).astype(np.float32))
        weight += 1e-4 * weight.norm() / direction.norm() * direction
    report = bridge.check_equivalence(model, variables, port, x, grads=False)
    assert not report.ok
    assert report.first_divergence is not None
    assert report.first_divergence.index == 2, str(report)


def test_one_thread_port_passes() -> None:
    """torch's own kernels with one thread (another blocking of the sums) pass, gradients included."""
    model = nn.Sequential([nn.Dense(256), jax.nn.gelu, nn.LayerNorm(), nn.Dense(7)])
    x = np.random.default_rng(0).standard_normal((64, 300)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    port = bridge.to_torch(model, variables)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = bridge.check_equivalence(model, variables, port, x)
    finally:
        torch.set_num_threads(threads)
    assert report.ok, str(report)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 300),
    st.integers(1, 5),
    st.sampled_from([1e-30, 1e-19, 1e-6, 1.0, 1e6, 1e19]),
    st.sampled_from([1e-20, 1e-3, 1.0, 1e3, 1e20]),
    st.integers(0, 2**32 - 1),
)
def test_squared_products_never_fall_below_the_exact_sum(
    fan_in: int, outputs: int, x_scale: float, w_scale: float, seed: int
) -> None:
    """The Dense bound's ``x^2 @ w^2``, computed in float32 where that is safe, is never below the exact sum
    (``math.fsum`` of the float64 squares, correctly rounded), and at most a few parts in 10^4 above it."""
    import math

    from bridge._numerics import squared_products

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, fan_in)) * x_scale
    w = rng.standard_normal((fan_in, outputs)) * w_scale
    got = squared_products(x, w)
    exact = np.array(
        [[math.fsum(float(a) ** 2 * float(b) ** 2 for a, b in zip(row, col, strict=True)) for col in w.T] for row in x]
    )
    assert (got >= exact * (1 - 1e-15)).all()
    small = exact > 1e-30  # away from float32's underflow, where an absolute margin is added
    assert (got[small] <= exact[small] * 1.001).all()
