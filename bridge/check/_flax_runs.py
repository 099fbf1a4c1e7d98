"""The compiled runs of a Flax model that a check needs, each at most once: the gradients of the loss (w.r.t.
the params, and the float inputs when asked), and one pass in the other precision (float64; float32 for a
float64 model) giving every call's output and the gradients again: the calibration's reference.

Op-by-op execution of a large model costs seconds, and a new jitted closure per check would compile every
time: the jitted functions are kept for the last few (model, loss) pairs. An NNX model is keyed by its
graphdef (its structure and settings), since the object itself can change between checks.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .._errors import LayerMismatchError, first_line
from .._jaxpr import Kink, first_narrowing, kinks
from .._numerics import Precision, unit_roundoff
from .._tensors import is_array, is_float, plain_tree
from ..capture import capture_flax, capture_nnx
from ._rows import take_rows

Loss = Callable[[Any], Any]


class FlaxRuns:
    """The runs of ``model`` on ``args``/``kwargs`` under ``loss`` (a scalar function of its output).

    ``wrt_inputs``: the gradients also w.r.t. the array arguments (all of them floating). ``other``: the
    reference's dtype (float64 by default)."""

    def __init__(
        self,
        model: nn.Module | nnx.Module,
        variables: Mapping[str, Any] | None,
        args: Any,
        kwargs: Any,
        loss: Loss,
        *,
        wrt_inputs: bool = False,
        other: Any = np.float64,
    ) -> None:
        if isinstance(model, nnx.Module):
            _, params, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
            variables = {"params": params, "rest": rest}
        self.model, self.variables, self.loss = model, dict(variables or {}), loss
        self.args, self.kwargs, self.fixed = _split_fixed(tuple(args), dict(kwargs))
        self.wrt_inputs, self.other = wrt_inputs, np.dtype(other)

    def on_rows(self, keep: np.ndarray) -> FlaxRuns:
        """The same runs (model, variables, loss) on the kept rows (first axis) of the array arguments."""
        kept = copy.copy(self)
        vars(kept).pop("_wide", None)  # the other precision's results belong to all the rows
        kept.args, kept.kwargs = take_rows((self.args, self.kwargs), keep)
        return kept

    @property
    def differentiable(self) -> bool:
        """Whether the model has parameters to differentiate."""
        return "params" in self.variables

    def gradients(self) -> Any:
        """The gradients w.r.t. the params in the model's own dtype, as nested dicts of call paths; with
        ``wrt_inputs``, ``(params', args')``, ``args'`` a tuple like the array arguments.

        Raises:
            LayerMismatchError: when the model cannot be differentiated (the message says why).
        """
        function = _compiled(self.model, self.loss, outputs=False, grads=True, wrt_inputs=self.wrt_inputs)
        try:
            gradients, _ = function(self.variables["params"], self.variables, self.args, self.kwargs, self.fixed)
        except Exception as e:  # the user's model code may raise anything
            raise LayerMismatchError(f"the Flax model could not be differentiated: {first_line(e)}") from e
        return _pure(gradients)

    @property
    def ran_wide(self) -> bool:
        """Whether the float64 pass has run (its results are then at hand)."""
        return "_wide" in vars(self)

    @functools.cached_property
    def _wide(self) -> tuple[list[Any] | None, Any]:
        with jax.enable_x64(True):
            variables, args, kwargs = self._in_other()
            grads = self.differentiable
            function = _compiled(self.model, self.loss, outputs=True, grads=grads, wrt_inputs=self.wrt_inputs)
            try:
                gradients, outputs = function(variables.get("params", {}), variables, args, kwargs, self.fixed)
            except Exception:  # a model that cannot run in that dtype: judged by the rounding bounds alone
                return None, None
            return jax.tree_util.tree_map(np.asarray, outputs), _pure(jax.tree_util.tree_map(np.asarray, gradients))

    def _forward(self) -> Callable[[Any, Any, Any, Any], Any]:
        """The model's output as a function of ``(params, variables, args, kwargs)`` (for tracing)."""
        graphdef = nnx.graphdef(self.model) if isinstance(self.model, nnx.Module) else None

        def forward(params: Any, v: Any, a: Any, k: Any) -> Any:
            return _forward(self.model, graphdef, params, v, a, k, self.fixed, outputs=False)[0]

        return forward

    def kinks(self) -> tuple[list[Kink], list[Kink]]:
        """The kinks the model meets (``bridge._jaxpr.kinks``: relu's ``max(x, 0)``, ...), evaluated in its own
        dtype and in the other: two lists alike, kink for kink, where both walk the same equations."""
        forward = self._forward()
        own = kinks(forward, self.variables.get("params", {}), self.variables, self.args, self.kwargs)
        with jax.enable_x64(True):
            variables, args, kwargs = self._in_other()
            other = kinks(forward, variables.get("params", {}), variables, args, kwargs)
        return own, other

    def narrowing(self) -> tuple[str, str] | None:
        """The first narrowing of a floating value inside the model (``bridge._jaxpr.first_narrowing``)."""
        with jax.enable_x64(True):
            return first_narrowing(
                self._forward(), self.variables.get("params", {}), self.variables, self.args, self.kwargs
            )

    def _in_other(self) -> tuple[Any, Any, Any]:
        """The variables and array arguments in the other precision (call it under ``jax.enable_x64``)."""
        cast = functools.partial(as_dtype, dtype=self.other)
        return jax.tree_util.tree_map(cast, (self.variables, self.args, self.kwargs))

    def release_outputs(self) -> None:
        """Let the other-precision call outputs go (the gradients stay): the comparisons of calls are done."""
        if self.ran_wide:
            self._wide = (None, self._wide[1])

    def wide_outputs(self) -> list[Any] | None:
        """Every call's output (in capture order) with the model, its variables and float inputs in the
        other precision (None when that run failed)."""
        return self._wide[0]

    def wide_gradients(self) -> Any:
        """``gradients()`` in the other precision (None when that run failed), from the pass of ``wide_outputs``."""
        return self._wide[1]


_COMPILED: list[tuple[Any, Any, tuple[bool, ...], Any]] = []  # (model or graphdef, loss, options, function)


def _compiled(model: Any, loss: Loss, *, outputs: bool, grads: bool, wrt_inputs: bool) -> Any:
    """``jax.jit`` of ``(params, variables, args, kwargs, fixed) -> (gradients or None, call outputs)``:
    the gradient of the loss w.r.t. the params (and the args, ``wrt_inputs``) when ``grads``, every module
    call's output when ``outputs`` (an empty list otherwise)."""
    graphdef = nnx.graphdef(model) if isinstance(model, nnx.Module) else None
    options = (outputs, grads, wrt_inputs)
    for cached_model, cached_loss, cached_options, function in _COMPILED:
        same = cached_model is model if graphdef is None else cached_model == graphdef
        if same and cached_loss is loss and cached_options == options:
            return function

    def run(params: Any, v: Any, a: Any, k: Any, fixed: Any) -> tuple[Any, list[Any]]:
        out, calls = _forward(model, graphdef, params, v, a, k, fixed, outputs=outputs)
        return loss(out), [call.output for call in calls]

    if grads:
        function = jax.jit(jax.grad(run, argnums=(0, 2) if wrt_inputs else 0, has_aux=True), static_argnums=4)
    else:
        function = jax.jit(lambda *xs: (None, run(*xs)[1]), static_argnums=4)
    _COMPILED.append((model if graphdef is None else graphdef, loss, options, function))
    del _COMPILED[:-8]
    return function


def _forward(
    model: Any, graphdef: Any, params: Any, v: Any, a: Any, k: Any, fixed: Any, *, outputs: bool
) -> tuple[Any, list[Any]]:
    """The model's output on the array arguments ``a``/``k`` and the ``fixed`` others, and every module call
    when ``outputs`` (else []); an NNX model by its ``graphdef``, its state other than params in ``v["rest"]``."""
    a, k = _with_fixed(a, k, fixed)
    if graphdef is not None:
        merged = nnx.merge(graphdef, params, v["rest"])
        return capture_nnx(merged, tuple(a), k) if outputs else (merged(*a, **k), [])
    full = {**v, "params": params}
    return capture_flax(model, full, tuple(a), k) if outputs else (model.apply(full, *a, **k), [])


def _split_fixed(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``(args, kwargs, fixed)``: the array arguments, traced by the compiled runs, and the others
    (``deterministic=True``, ``head_mask=None``) as a hashable static argument, fixed at their values."""
    arrays = tuple(a if is_array(a) else None for a in args)
    fixed_args = tuple((i, a) for i, a in enumerate(args) if not is_array(a))
    keyword_arrays = {k: v for k, v in kwargs.items() if is_array(v)}
    fixed_kwargs = tuple((k, v) for k, v in kwargs.items() if not is_array(v))
    return arrays, keyword_arrays, (fixed_args, fixed_kwargs)


def _with_fixed(args: Any, kwargs: Any, fixed: Any) -> tuple[list[Any], dict[str, Any]]:
    fixed_args, fixed_kwargs = fixed
    filled = list(args)
    for i, value in fixed_args:
        filled[i] = value
    return filled, {**kwargs, **dict(fixed_kwargs)}


def _pure(tree: Any) -> Any:
    """Gradients as nested dicts with string keys, addressed like the call paths (NNX state included)."""
    if isinstance(tree, tuple):  # (params', args') when differentiating w.r.t. the inputs too
        return tuple(_pure(value) for value in tree)
    return plain_tree(nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree)


def other_dtype(dtype: Any) -> np.dtype[Any]:
    """The calibration's reference dtype for a computation in ``dtype``: float64, or float32 for float64."""
    return np.dtype(np.float32 if np.dtype(dtype).itemsize == 8 else np.float64)


def error_scale(precision: Precision, other: Any) -> float:
    """What a difference from the run in ``other`` is worth as the own rounding error of a computation in
    ``precision``: 1 where ``other`` is wider; the ratio of unit roundoffs where it is narrower (float64
    checked against float32: the float32 error shows the conditioning, scaled down to float64's roundoff)."""
    return min(1.0, precision.storage / unit_roundoff(other))


def as_dtype(value: Any, dtype: Any) -> Any:
    """A float array in ``dtype`` (float64 needs ``jax.enable_x64``); anything else as it is."""
    array = jnp.asarray(value) if isinstance(value, jax.Array | np.ndarray) else None
    return array.astype(dtype) if array is not None and is_float(array.dtype) else value
