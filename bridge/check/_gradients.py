"""Gradients of a loss on both sides, w.r.t. the input and every parameter, mapped by the layer rules.

Their tolerance has two parts: the analytic bound of ``gradient_tolerance``, and a calibration
that measures how sensitive the Flax gradient is to rounding (large through normalisations, which
divide by a small deviation, and through derivatives of transcendental functions). Below float64
the Flax gradient is computed again in float64: the difference is the reference's own error, and a
correct port may differ by a few times that much. In float64 it is computed again in float32: the
difference, scaled by the ratio of unit roundoffs, estimates the float64 error the same way. That rerun
happens only for rows the analytic bound alone fails (``CALIBRATE_LAZILY``): the calibration only widens
a tolerance, so the verdicts are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import traverse_util

from .._flax_model import apply, parameter_leaves
from .._numerics import Precision, Tolerance, finite_rms, gradient_tolerance
from .._tensors import is_float, to_numpy, to_tensor
from ..capture._chain import Step, Variables
from ..match._match import owned_tensors
from ..rules import LayerRule
from ._compare import compare
from ._flax_runs import FlaxRuns
from ._report import GradientRow

# Roundings of the output's cotangent allowed where a gradient cancels to about zero.
C_FLOOR = 4.0
# In float64: derivatives of elementary functions differ between implementations by up to this
# many roundings (measured: about 500 for the tanh-approximate GELU's derivative).
C_DERIVATIVE_ROUNDOFFS = 2048.0
# How many times the reference's own measured error a correct port may show.
C_CALIBRATION = 8.0
# Judge each comparison by the rounding bounds first, and run the reference in the other precision only
# for those they fail (the calibration only widens a tolerance, so the verdicts are the same). False
# calibrates every comparison: the tests check that both give the same verdicts.
CALIBRATE_LAZILY = True


def compare_gradients(
    model: Any,
    variables: Any,
    torch_module: torch.nn.Sequential,
    planned: Sequence[tuple[Step, LayerRule | None]],
    x: np.ndarray,
    loss: Callable[[Any], Any],
    tolerance: Tolerance | None,
    input_permutations: Mapping[int, np.ndarray] | None = None,
) -> tuple[GradientRow, ...]:
    """One row per gradient: the input's first, then each parameter's in chain order, each parameter
    found in the port by the module that owns it (``bridge.match._match``). ``input_permutations``: positions
    whose torch layer takes its input features in another order (the Linear after a channels-first
    ``nn.Flatten``), as the index of each Flax feature in torch's order."""
    input_permutations = input_permutations or {}
    differentiable = is_float(x.dtype)
    wide = differentiable and np.dtype(x.dtype).itemsize == 8
    runs = FlaxRuns(
        model,
        variables,
        (jnp.asarray(x),),
        {},
        loss,
        wrt_inputs=differentiable,
        other=np.float32 if wide else np.float64,
    )
    flax_params, flax_x = _with_input(runs.gradients(), differentiable)
    # float64 checked against float32: the float32 error, scaled down to float64's roundoff
    sensitivity = Precision.of(np.float64).storage / Precision.of(np.float32).storage if wide else 1.0

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

    def reference(path: tuple[str, ...] | None, flax_name: str = "") -> np.ndarray | None:
        """The reference gradient in the other precision (the input's for ``path`` None), run when first needed."""
        other = runs.wide_gradients()
        if other is None:
            return None
        params, x_grad = _with_input(other, differentiable)
        return x_grad if path is None else _at(params, path)[flax_name]

    def row(name: str, flax_value: Any, other: Callable[[], Any], candidate: torch.Tensor | None) -> GradientRow:
        """One gradient's row: judged by the rounding bounds, and where they fail, with the calibration
        that ``other()`` (the reference in the other precision) gives added (a tolerance it only widens)."""
        ref = np.ascontiguousarray(flax_value, np.float64)  # a transposed kernel: row order, as torch's
        got = np.empty((0,)) if candidate is None else to_numpy(candidate)
        if tolerance is not None:
            return GradientRow(name, compare(ref, got, tolerance))
        tol = gradient_tolerance(ref, length, depth, precision).plus(atol=floor * np.sqrt(length * depth))
        if wide:  # a float32 rerun shows conditioning, not how two float64 implementations differ
            derivative = C_DERIVATIVE_ROUNDOFFS * precision.storage
            tol = tol.plus(rtol=derivative, atol=derivative * finite_rms(ref))
        comparison = compare(ref, got, tol)
        reference_value = None if comparison.ok and CALIBRATE_LAZILY else other()
        if reference_value is None:
            return GradientRow(name, comparison)
        error = sensitivity * np.abs(ref - np.asarray(reference_value, np.float64))
        return GradientRow(name, compare(ref, got, tol.of(ref) + C_CALIBRATION * (error + finite_rms(error))))

    rows = []
    if flax_x is not None:
        input_gradient = torch_grads[0] if torch_grads[0] is not None else torch.zeros_like(x_tensor)
        rows.append(row("input", flax_x, lambda: reference(None), input_gradient))
    children = list(torch_module)
    for step, rule in planned:
        if rule is None or step.index >= len(children):
            continue
        permutation = input_permutations.get(step.index)
        for owned in owned_tensors(rule, step.layer, step.variables, children[step.index], by_value=True):
            m = owned.param_map
            if m.collection != "params":
                continue
            flax_name = f"{'/'.join(step.flax_path)}/{m.flax_name}"
            value = m.flax_to_torch(np.asarray(_at(flax_params, step.flax_path)[m.flax_name]))

            def other(m: Any = m, path: tuple[str, ...] = step.flax_path) -> Any:
                found = reference(path, m.flax_name)
                return None if found is None else m.flax_to_torch(np.asarray(found))

            if owned.tensor is None:  # never compared against zeros: a row that says so and fails
                rows.append(row(f"{flax_name} <-> (no tensor of torch {step.index} holds it)", value, other, None))
                continue
            torch_name = f"{step.index}.{owned.torch_name}"
            gradient = by_name.get(torch_name)
            if gradient is None:  # the parameter does not reach the output: its gradient is zero
                gradient = torch.zeros_like(owned.tensor)
            elif permutation is not None and gradient.ndim == 2 and gradient.shape[1] == len(permutation):
                gradient = gradient[:, torch.as_tensor(permutation)]  # columns back to Flax's order
            rows.append(row(f"{flax_name} <-> {torch_name}", value, other, gradient))
    return tuple(rows)


def _cancellation_floor(
    model: Any, variables: Variables, x: np.ndarray, loss: Callable[[Any], Any], precision: Precision
) -> float:
    """An absolute floor for gradients that cancel to about zero (the sum of a softmax is constant):
    a few roundings of the output's cotangent times the scale of the inputs and parameters."""
    y = apply(model, variables, jnp.asarray(x))
    cotangent = np.asarray(jax.grad(lambda out: loss(out))(y), np.float64)
    leaves = [a.astype(np.float64) for a in parameter_leaves(model, variables) if is_float(a.dtype)]
    scale = max(
        [finite_rms(a) for a in leaves if a.size]
        + ([finite_rms(np.asarray(x, np.float64))] if is_float(x.dtype) else [])
        + [1.0]
    )
    return C_FLOOR * precision.accumulation * finite_rms(cotangent) * scale


def _with_input(gradients: Any, differentiable: bool) -> tuple[Any, Any]:
    """``(params', x')`` of ``FlaxRuns.gradients()`` on one argument x (``x'`` None when x is not differentiated)."""
    if not differentiable:
        return gradients, None
    params, (x_grad,) = gradients
    return params, np.asarray(x_grad)


def _at(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree
