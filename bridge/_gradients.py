"""Gradients of a loss on both sides, w.r.t. the input and every parameter, mapped by the layer rules.

Their tolerance has two parts: the analytic bound of ``gradient_tolerance``, and, when the check
runs below float64, a calibration: the Flax gradient computed again in float64 shows how much
rounding error the reference itself carries there (large through normalisations, which divide by
a small deviation, and through the derivatives of transcendental functions); a correct port may
differ from the reference by a few times that much.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import traverse_util

from ._chain import Step, Variables
from ._compare import compare
from ._flax_model import apply, cast, gradients, parameter_leaves
from ._numerics import Precision, gradient_tolerance
from ._report import GradientRow
from ._tensors import to_numpy, to_tensor
from .rules import LayerRule

# Roundings of the output's cotangent allowed where a gradient cancels to about zero.
C_FLOOR = 4.0
# How many times the reference's own float64-measured error a correct port may show.
C_CALIBRATION = 8.0
# In float64, where no wider reference exists: derivatives of elementary functions differ between
# implementations by up to this many roundings (measured: about 500 for the tanh-GELU's derivative).
C_DERIVATIVE_ROUNDOFFS = 2048.0


class Tolerance(NamedTuple):
    """Explicit ``rtol``/``atol``: ``atol + rtol * |reference|``."""

    rtol: float
    atol: float

    def of(self, reference: np.ndarray) -> np.ndarray:
        """The per-element tolerance for ``reference``."""
        return self.atol + self.rtol * np.abs(reference)


def _is_float(dtype: Any) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.floating))


def _float64_reference(model: Any, variables: Any, x: np.ndarray, loss: Callable[[Any], Any]) -> tuple[Any, Any]:
    with jax.enable_x64(True):
        wide_model, wide_variables = cast(model, variables, jnp.float64)
        inputs = x.astype(np.float64) if _is_float(x.dtype) else x
        params, x_grad = gradients(wide_model, wide_variables, inputs, loss)
        return jax.tree_util.tree_map(np.asarray, params), None if x_grad is None else np.asarray(x_grad)


def compare_gradients(
    model: Any,
    variables: Any,
    torch_module: torch.nn.Sequential,
    planned: Sequence[tuple[Step, LayerRule | None]],
    x: np.ndarray,
    loss: Callable[[Any], Any],
    tolerance: Tolerance | None,
) -> tuple[GradientRow, ...]:
    """One row per gradient: the input's first, then each parameter's in chain order."""
    flax_params, flax_x = gradients(model, variables, x, loss)
    narrow = _is_float(x.dtype) and np.dtype(x.dtype).itemsize < 8
    reference_params, reference_x = _float64_reference(model, variables, x, loss) if narrow else (None, None)

    differentiable = _is_float(x.dtype)
    x_tensor = to_tensor(x).requires_grad_(differentiable)
    named = dict(torch_module.named_parameters())
    wanted = ([x_tensor] if differentiable else []) + list(named.values())
    torch_grads = torch.autograd.grad(loss(torch_module(x_tensor)), wanted, allow_unused=True)
    by_name = dict(zip(named, torch_grads[1:] if differentiable else torch_grads, strict=True))

    precision = Precision.of(x.dtype if differentiable else np.float32)
    floor = _cancellation_floor(model, variables, x, loss, precision)
    steps = [step for step, _ in planned]
    sizes = [int(d) for s in steps for a in traverse_util.flatten_dict(dict(s.variables)).values() for d in np.shape(a)]
    length = max([*sizes, int(np.prod(x.shape[:-1]))])
    depth = sum(1 for s in steps if s.variables)

    def row(name: str, flax_value: Any, reference: Any, candidate: torch.Tensor | None) -> GradientRow:
        ref = np.asarray(flax_value, np.float64)
        if tolerance is not None:
            tol = tolerance.of(ref)
        else:
            tol = gradient_tolerance(ref, length, depth, precision) + floor * np.sqrt(length * depth)
            if reference is not None:
                error = np.abs(ref - np.asarray(reference, np.float64))
                tol = tol + C_CALIBRATION * (error + _rms(error))
            else:  # float64 itself: no wider reference to calibrate against
                tol = tol + C_DERIVATIVE_ROUNDOFFS * precision.storage * (np.abs(ref) + _rms(ref))
        got = np.zeros_like(ref) if candidate is None else to_numpy(candidate).astype(np.float64)
        return GradientRow(name, compare(ref, got, tol))

    rows = []
    if flax_x is not None:
        rows.append(row("input", flax_x, reference_x, torch_grads[0]))
    for step, rule in planned:
        if rule is None:
            continue
        for m in rule.param_maps(step.layer, step.variables):
            if m.collection != "params":
                continue
            torch_name = f"{step.index}.{m.torch_name}"
            value = m.flax_to_torch(np.asarray(_at(flax_params, step.flax_path)[m.flax_name]))
            reference = None
            if reference_params is not None:
                reference = m.flax_to_torch(np.asarray(_at(reference_params, step.flax_path)[m.flax_name]))
            rows.append(
                row(
                    f"{'/'.join(step.flax_path)}/{m.flax_name} <-> {torch_name}",
                    value,
                    reference,
                    by_name.get(torch_name),
                )
            )
    return tuple(rows)


def _cancellation_floor(
    model: Any, variables: Variables, x: np.ndarray, loss: Callable[[Any], Any], precision: Precision
) -> float:
    """An absolute floor for gradients that cancel to about zero (the sum of a softmax is constant):
    a few roundings of the output's cotangent times the scale of the inputs and parameters."""
    y = apply(model, variables, jnp.asarray(x))
    cotangent = np.asarray(jax.grad(lambda out: loss(out))(y), np.float64)
    leaves = [a.astype(np.float64) for a in parameter_leaves(model, variables) if _is_float(a.dtype)]
    scale = max(
        [_rms(a) for a in leaves if a.size] + ([_rms(np.asarray(x, np.float64))] if _is_float(x.dtype) else []) + [1.0]
    )
    return C_FLOOR * precision.accumulation * _rms(cotangent) * scale


def _at(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _rms(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.sqrt(np.mean(np.square(finite)))) if finite.size else 0.0
