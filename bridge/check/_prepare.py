"""What a check settles before it runs anything: the inputs it draws, both sides cast to one dtype, and each chain
layer's tolerance (explicit, or the rounding bound its rule derives; one seed's or a sweep's stacked seeds)."""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from .. import _flax_model as flax_model
from .._arguments import call_arguments
from .._errors import InvalidArgumentError
from .._numerics import DEFAULT_RTOL_ATOL, Precision, Tolerance
from .._tensors import is_float, torch_dtype
from .._validate import require_seed
from ..capture import Step, Variables, discover_chain, drawn_rows, flax_layer_outputs
from ..rules import BoundInputs, LayerRule, rule_or_none
from ._flax_runs import as_dtype
from ._outputs import output_leaves

_Port = TypeVar("_Port", bound=torch.nn.Module)
Loss = Callable[[Any], Any]


class CheckOptions(NamedTuple):
    """``check_equivalence``'s keyword options, passed down whole (to the chain, the tree and the sweeps)
    rather than one parameter at a time; the meaning of each is in ``bridge.check_equivalence``."""

    seed: int = 0
    n_inputs: int = 32
    dtype: Any = None
    rtol: float | None = None
    atol: float | None = None
    grads: bool = True
    loss: Loss | None = None
    channels_last: bool = True
    torch_inputs: Any = None
    mapping: Mapping[str, str] | None = None
    allow_unchecked: bool = False


def floating_dtype(inputs: Any) -> Any:
    """The dtype of the first floating input (float32 when none is: token ids), which sets rtol/atol's defaults."""
    leaves = [] if inputs is None else output_leaves(call_arguments(inputs))
    return next((a.dtype for a in leaves if is_float(a.dtype)), np.float32)


def explicit_tolerance(rtol: float | None, atol: float | None, dtype: Any) -> Tolerance | None:
    if rtol is None and atol is None:
        return None
    name = np.dtype(dtype).name
    default_rtol, default_atol = DEFAULT_RTOL_ATOL.get(name, DEFAULT_RTOL_ATOL["float32"])
    chosen = Tolerance(default_rtol if rtol is None else float(rtol), default_atol if atol is None else float(atol))
    if not (chosen.rtol >= 0 and chosen.atol >= 0):
        raise InvalidArgumentError(f"rtol and atol must be >= 0, got rtol={chosen.rtol}, atol={chosen.atol}")
    return chosen


_GENERIC_RULE = LayerRule()  # its error_bound: slope <= 1 and one rounding, for layers with no rule


def output_tolerance(model: Any, variables: Variables | None, inputs: Any) -> tuple[np.ndarray, np.ndarray]:
    """The Flax chain's output on ``inputs`` and how far a correct port's output may lie from it there:
    the tolerance ``check_equivalence`` derives end to end, for comparing stored (golden) outputs.

    Returns:
        ``(output, tolerance)``: float64 arrays of the output's shape.
    """
    steps = discover_chain(model, variables)
    x = np.asarray(inputs)
    outputs = [np.asarray(y) for y in flax_layer_outputs(model, variables, jnp.asarray(x))]
    tol_in = np.zeros(x.shape)
    for step, x_in, y in zip(steps, [x, *outputs[:-1]], outputs, strict=True):
        tol_in = layer_bounds(step.layer, step.variables, rule_or_none(step.layer), x_in, y, tol_in, None)[0]
    return np.asarray(outputs[-1], np.float64), tol_in


def layer_bounds(
    layer: Any,
    variables: Variables,
    rule: LayerRule | None,
    x_in: Any,
    y: Any,
    tol_in: np.ndarray,
    tolerance: Tolerance | None,
    stacked: bool = False,
) -> tuple[np.ndarray, np.ndarray, Precision]:
    """One position's output tolerances, end to end (its input off by ``tol_in``) and isolated, and its precision;
    ``stacked``: every array and variable carries a leading axis of seeds (the sweep's)."""
    x64, y64 = np.asarray(x_in, np.float64), np.asarray(y, np.float64)
    precision = Precision.of(y.dtype if is_float(y.dtype) else np.float32)
    bound_e2e = layer_bound(rule, layer, variables, BoundInputs(x64, y64, tol_in, precision, stacked), tolerance)
    isolated = BoundInputs(x64, y64, np.zeros_like(x64), precision, stacked)
    return bound_e2e, layer_bound(rule, layer, variables, isolated, tolerance), precision


def one_seed(tree: Any, index: int) -> Any:
    """Seed ``index``'s slice of a stacked tree (arrays or tensors with a leading axis of seeds)."""
    return jax.tree_util.tree_map(operator.itemgetter(index), tree)


def layer_bound(
    rule: LayerRule | None, layer: Any, variables: Variables, inputs: BoundInputs, tolerance: Tolerance | None
) -> np.ndarray:
    """The per-element tolerance of one layer's output: explicit, or derived by the layer's rule (stacked seeds
    in one call where the rule takes them, else one seed at a time)."""
    if tolerance is not None:
        return tolerance.of(inputs.y)
    if inputs.stacked and not (rule or _GENERIC_RULE).stacked_bounds:
        x, y, tol_in, precision, _ = inputs
        per_seed = [BoundInputs(x[s], y[s], tol_in[s], precision) for s in range(len(x))]
        return np.stack([layer_bound(rule, layer, one_seed(variables, s), b, None) for s, b in enumerate(per_seed)])
    if inputs.tol_in.shape != inputs.x.shape:  # the layer changes shape: its input error cannot be mapped
        inputs = inputs._replace(tol_in=np.zeros(inputs.x.shape))
    with np.errstate(invalid="ignore", over="ignore"):
        bound = (rule or _GENERIC_RULE).error_bound(layer, variables, inputs)
    return np.broadcast_to(np.asarray(bound, np.float64), inputs.y.shape)


def chain_inputs(inputs: Any, steps: Sequence[Step], seed: int, n_inputs: int, dtype: Any) -> np.ndarray:
    """A chain's input: ``inputs`` as given, else ``n_inputs`` rows drawn from ``seed`` for its first layer
    (``drawn_rows``), cast to ``dtype`` where given."""
    if inputs is None:
        x = drawn_rows(steps, seed, n_inputs)
    else:
        require_seed(seed)
        x = np.asarray(inputs)
        if x.ndim == 0:
            raise InvalidArgumentError("inputs must have rank >= 1 (features on the last axis), got a scalar")
        if x.size == 0:
            raise InvalidArgumentError(f"inputs of shape {tuple(x.shape)} hold no values: give at least one row")
    if dtype is not None and is_float(x.dtype):
        x = x.astype(jnp.dtype(dtype))
    return x


def cast_pair(model: Any, variables: Any, torch_module: _Port, dtype: Any) -> tuple[Any, Any, _Port]:
    """Copies of both sides in ``dtype`` (the caller's model, variables and module stay as they were)."""
    try:
        target = jnp.dtype(dtype)
    except TypeError as e:
        raise InvalidArgumentError(f"dtype {dtype!r} is not a dtype (use float32, float64 or bfloat16)") from e
    if not jnp.issubdtype(target, jnp.floating):
        raise InvalidArgumentError(f"dtype {target.name} is not a floating dtype: use float32, float64 or bfloat16")
    if target == jnp.float64 and not jax.config.read("jax_enable_x64"):
        raise InvalidArgumentError(
            "dtype float64 needs 64-bit JAX: jax.config.update('jax_enable_x64', True) before building the model"
        )
    model, variables = flax_model.cast(model, variables, target)
    return model, variables, copy.deepcopy(torch_module).to(torch_dtype(target))


def cast_inputs(inputs: Any, dtype: Any) -> Any:
    """Every floating array among ``inputs`` (arrays, tensors, nested tuples and dicts) in ``dtype``."""

    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(torch_dtype(dtype)) if value.is_floating_point() else value
        return as_dtype(value, jnp.dtype(dtype))

    return jax.tree_util.tree_map(cast, inputs, is_leaf=lambda v: isinstance(v, torch.Tensor))


def cast_compute_dtype(model: Any, variables: Any, steps: tuple[Step, ...], dtype: Any) -> tuple[Any, tuple[Step, ...]]:
    """Layers that compute in a dtype of their own (``nn.Dense(dtype=jnp.float16)``) compute in ``dtype``
    too: cloned so in an ``nn.Sequential`` model, refused with the fix where the model builds them itself.

    Raises:
        InvalidArgumentError: naming the first layer whose compute dtype cannot be changed.
    """
    target = jnp.dtype(dtype)
    stale = [s for s in steps if getattr(s.layer, "dtype", None) is not None and jnp.dtype(s.layer.dtype) != target]
    if not stale:
        return model, steps
    if isinstance(model, nn.Sequential):
        layers = [
            layer.clone(dtype=target)
            if isinstance(layer, nn.Module) and getattr(layer, "dtype", None) is not None
            else layer
            for layer in model.layers
        ]
        model = model.clone(layers=layers)
        return model, discover_chain(model, variables)
    raise flax_model.own_compute_dtype_error(stale[0].where, stale[0].layer, target, model)
