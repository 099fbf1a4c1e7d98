"""Correct implementations of the layers that round differently from Flax, to prove that the checker's
tolerances accept every one of them (tests/test_computed_differently.py, benchmarks/false_alarms.py).

Each computes the same function as Flax in another legitimate way: in float64 (longdouble for float64)
then rounded once; the products summed left to right or right to left without FMA; pairwise; in a
random order of the K terms; blocked as BLAS kernels do (bias in the accumulator first); torch's own
kernel with one thread or several; torch's matmul then a separate bias add. Half types accumulate in
float32, as every CPU and GPU kernel does by default, and round the result once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
import torch

BF16 = np.dtype(ml_dtypes.bfloat16)
SUM_ORDERS = ("wide", "left_to_right", "right_to_left", "pairwise", "random_order", "blocked_bias_first")
TORCH_ORDERS = ("torch_one_thread", "torch_threads", "torch_matmul_then_bias")
ORDERS = SUM_ORDERS + TORCH_ORDERS


def accumulator(dtype: Any) -> np.dtype[Any]:
    """The dtype sums accumulate in: float32 for half types and float32, float64 for float64."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def ordered_sum(terms: np.ndarray, order: str, rng: np.random.Generator, first: np.ndarray | None = None) -> np.ndarray:
    """Sum ``terms`` over axis -2 in the accumulator's dtype (the terms' own), in ``order``; ``first`` (a
    bias, broadcast over the sum's result) starts the accumulator where the order says so, else is added last."""
    acc = terms.dtype
    if order == "wide":  # exactly enough, rounded once at the end
        wide = np.longdouble if acc == np.float64 else np.float64
        total = terms.astype(wide).sum(axis=-2)
        return (total + (0 if first is None else first.astype(wide))).astype(acc)
    if order == "left_to_right":
        total = np.cumsum(terms, axis=-2, dtype=acc)[..., -1, :]
    elif order == "right_to_left":
        total = np.cumsum(terms[..., ::-1, :], axis=-2, dtype=acc)[..., -1, :]
    elif order == "random_order":
        total = np.cumsum(terms[..., rng.permutation(terms.shape[-2]), :], axis=-2, dtype=acc)[..., -1, :]
    elif order == "pairwise":
        k = terms.shape[-2]
        size = 1 << max(k - 1, 0).bit_length()
        padded = np.zeros((*terms.shape[:-2], size, terms.shape[-1]), acc)
        padded[..., :k, :] = terms
        while padded.shape[-2] > 1:
            padded = (padded[..., 0::2, :] + padded[..., 1::2, :]).astype(acc)
        total = padded[..., 0, :]
    elif order == "blocked_bias_first":  # C = bias; for each K block: C += (block sum), as a BLAS kernel does
        block = int(rng.integers(1, 65))
        total = np.zeros(np.broadcast_shapes(terms.shape[:-2] + terms.shape[-1:]), acc)
        if first is not None:
            total = total + first.astype(acc)
        for start in range(0, terms.shape[-2], block):
            total = (total + np.cumsum(terms[..., start : start + block, :], axis=-2, dtype=acc)[..., -1, :]).astype(
                acc
            )
        return total
    else:
        raise ValueError(f"unknown order {order!r}")
    return total if first is None else (total + first.astype(acc)).astype(acc)


def affine(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, order: str, seed: int = 0) -> np.ndarray:
    """``x @ kernel + bias`` (kernel ``(K, N)``, Flax's layout) computed in ``order``, rounded to x's dtype.

    Stacked cases broadcast: ``x (..., rows, K)``, ``kernel (..., K, N)``, ``bias (..., N)``."""
    dtype = x.dtype
    rng = np.random.default_rng(seed)
    if order in TORCH_ORDERS:
        return _torch_affine(x, kernel, bias, order)
    acc = accumulator(dtype)
    terms = (x.astype(acc)[..., :, :, None] * kernel.astype(acc)[..., None, :, :]).astype(acc)  # (..., rows, K, N)
    first = None if bias is None else bias.astype(acc)[..., None, :]
    return ordered_sum(terms, order, rng, first).astype(dtype)


def _torch_affine(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, order: str) -> np.ndarray:
    from bridge._tensors import to_numpy, to_tensor

    xt, wt = to_tensor(x), to_tensor(np.swapaxes(kernel, -1, -2))
    bt = None if bias is None else to_tensor(bias)
    threads = torch.get_num_threads()
    try:
        if order == "torch_one_thread":
            torch.set_num_threads(1)
        if order == "torch_matmul_then_bias":
            y = xt @ wt.transpose(-1, -2)
            y = y if bt is None else y + bt.unsqueeze(-2)
        elif wt.ndim == 2:
            y = torch.nn.functional.linear(xt, wt, bt)
        else:  # stacked cases: one baddbmm, the bias in the accumulator (beta = 1)
            flat_x = xt.reshape(-1, *xt.shape[-2:])
            flat_w = wt.reshape(-1, *wt.shape[-2:]).transpose(-1, -2)
            if bt is None:
                y = torch.bmm(flat_x, flat_w)
            else:
                start = bt.reshape(-1, 1, bt.shape[-1]).expand(-1, flat_x.shape[-2], -1)
                y = torch.baddbmm(start, flat_x, flat_w)
            y = y.reshape(*xt.shape[:-1], wt.shape[-2])
    finally:
        torch.set_num_threads(threads)
    return to_numpy(y)


def layer_norm(
    x: np.ndarray, scale: np.ndarray | None, bias: np.ndarray | None, epsilon: float, order: str, seed: int = 0
) -> np.ndarray:
    """LayerNorm over the last axis, statistics summed in ``order`` (two passes: mean, then the centred
    squares), or torch's own kernel; rounded to x's dtype."""
    dtype = x.dtype
    if order in TORCH_ORDERS:
        from bridge._tensors import to_numpy, to_tensor

        threads = torch.get_num_threads()
        try:
            if order == "torch_one_thread":
                torch.set_num_threads(1)
            y = torch.nn.functional.layer_norm(
                to_tensor(x),
                (x.shape[-1],),
                None if scale is None else to_tensor(scale),
                None if bias is None else to_tensor(bias),
                eps=epsilon,
            )
        finally:
            torch.set_num_threads(threads)
        return to_numpy(y)
    rng = np.random.default_rng(seed)
    acc = accumulator(dtype)
    xa = x.astype(acc)
    n = acc.type(x.shape[-1])
    mean = (ordered_sum(xa[..., :, None], order, rng)[..., 0] / n).astype(acc)[..., None]
    centred = (xa - mean).astype(acc)
    var = (ordered_sum(np.square(centred)[..., :, None], order, rng)[..., 0] / n).astype(acc)[..., None]
    if order == "wide":
        wide = np.longdouble if acc == np.float64 else np.float64
        xw = x.astype(wide)
        mean_w = xw.mean(axis=-1, keepdims=True)
        centred_w = xw - mean_w
        y = centred_w / np.sqrt(np.square(centred_w).mean(axis=-1, keepdims=True) + wide(epsilon))
        if scale is not None:
            y = y * scale.astype(wide)
        if bias is not None:
            y = y + bias.astype(wide)
        return y.astype(dtype)
    y = (centred * (acc.type(1) / np.sqrt(var + acc.type(epsilon)))).astype(acc)
    if scale is not None:
        y = (y * scale.astype(acc)).astype(acc)
    if bias is not None:
        y = (y + bias.astype(acc)).astype(acc)
    return y.astype(dtype)


def torch_module(order: str, kind: str) -> Callable[..., torch.nn.Module]:
    """A torch module class computing Dense (``kind="Linear"``) in ``order`` with autograd, for whole-model
    checks: ``OrderedLinear(in, out)`` holds ``weight (out, in)`` and ``bias`` like ``torch.nn.Linear``."""
    if kind != "Linear":
        raise ValueError(kind)

    class OrderedLinear(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            terms = x.unsqueeze(-1) * self.weight.t()  # (..., K, N), products rounded (no FMA)
            if order == "left_to_right":
                total = terms.cumsum(dim=-2)[..., -1, :]
            elif order == "right_to_left":
                total = terms.flip(-2).cumsum(dim=-2)[..., -1, :]
            elif order == "random_order":
                generator = torch.Generator().manual_seed(terms.shape[-2])
                total = terms[..., torch.randperm(terms.shape[-2], generator=generator), :].cumsum(dim=-2)[..., -1, :]
            elif order == "pairwise":
                k = terms.shape[-2]
                size = 1 << max(k - 1, 0).bit_length()
                total = torch.nn.functional.pad(terms, (0, 0, 0, size - k))
                while total.shape[-2] > 1:
                    total = total[..., 0::2, :] + total[..., 1::2, :]
                total = total[..., 0, :]
            elif order == "wide":
                total = (x.double() @ self.weight.double().t()).to(x.dtype)
            else:
                raise ValueError(order)
            return total if self.bias is None else total + self.bias

    OrderedLinear.__name__ = OrderedLinear.__qualname__ = f"Linear_{order}"
    return OrderedLinear


class DenseCases:
    """``cases`` random Dense layers of one fan-in ``k`` stacked on a leading axis, with their inputs, as
    the property tests and the benchmark draw them: inputs of scale ``x_scale``, biases zero, ordinary
    or large next to ``x . w`` (``bias_scale`` times its size), and optionally cancelling rows (the first
    output's terms sum to about zero)."""

    def __init__(
        self,
        k: int,
        *,
        cases: int,
        rows: int,
        n: int,
        dtype: Any,
        x_scale: float,
        bias_scale: float | None,
        cancel: bool,
        seed: int,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        kernel = rng.standard_normal((cases, k, n)) / np.sqrt(k)
        x = rng.standard_normal((cases, rows, k)) * x_scale
        if cancel:  # remove the component of each row along the first column: its sum cancels
            column = kernel[:, :, :1]  # (cases, k, 1)
            norm = np.maximum(np.sum(np.square(column), axis=1, keepdims=True), 1e-300)
            x = x - (x @ column) / np.swapaxes(norm, -1, -2) * np.swapaxes(column, -1, -2)
        typical = x_scale  # |x . w| is about x_scale with this kernel scale
        self.kernel = kernel.astype(self.dtype)
        self.x = x.astype(self.dtype)
        self.bias = (
            None if bias_scale is None else (rng.standard_normal((cases, n)) * typical * bias_scale).astype(self.dtype)
        )


def flax_dense_outputs(cases: DenseCases) -> np.ndarray:
    """Flax's ``nn.Dense`` on each stacked case (one jitted ``vmap`` of its ``apply``)."""
    import jax

    apply = _stacked_dense(cases.kernel.shape[-1], cases.bias is not None, cases.dtype.name)
    params: dict[str, Any] = {"kernel": cases.kernel}
    if cases.bias is not None:
        params["bias"] = cases.bias
    with jax.enable_x64(cases.dtype == np.float64):
        return np.asarray(apply({"params": params}, cases.x))


_STACKED: dict[tuple[int, bool, str], Any] = {}


def _stacked_dense(n: int, use_bias: bool, dtype_name: str) -> Any:
    import flax.linen as nn
    import jax

    key = (n, use_bias, dtype_name)
    if key not in _STACKED:
        dtype = BF16 if dtype_name == "bfloat16" else np.dtype(dtype_name)
        layer = nn.Dense(n, use_bias=use_bias, dtype=dtype, param_dtype=dtype)
        _STACKED[key] = jax.jit(jax.vmap(layer.apply))
    return _STACKED[key]


def dense_bound(cases: DenseCases, flax_y: np.ndarray) -> np.ndarray:
    """The checker's own isolated tolerance for each case (the Dense rule's ``error_bound``, stacked)."""
    import flax.linen as nn

    from bridge._numerics import Precision
    from bridge.rules import BoundInputs
    from bridge.rules.dense import DenseRule

    params: dict[str, Any] = {"kernel": cases.kernel}
    if cases.bias is not None:
        params["bias"] = cases.bias
    x64 = cases.x.astype(np.float64)
    y64 = flax_y.astype(np.float64)
    inputs = BoundInputs(x64, y64, np.zeros_like(x64), Precision.of(cases.dtype), stacked=True)
    layer = nn.Dense(cases.kernel.shape[-1], use_bias=cases.bias is not None)
    return DenseRule().error_bound(layer, {"params": params}, inputs)


def worst_ratios(reference: np.ndarray, candidate: np.ndarray, tolerance: np.ndarray) -> np.ndarray:
    """The largest err/tol of each stacked case, through the checker's own comparison."""
    from bridge.check._compare import compare_per_seed

    return compare_per_seed(reference, candidate, tolerance).worst_ratio
