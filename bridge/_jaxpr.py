"""Reading jaxprs: which equations carry a sub-jaxpr to walk into, which sub-jaxpr is ``jax.nn.relu``, an
evaluation that records the inputs of every kink (the points where a function's derivative jumps: ``relu``'s
``max(x, 0)``, ``clip``, ``abs``, the comparison of ``leaky_relu``) on the way, and the first conversion of a
floating value to a narrower dtype (a float64 model that computes part of itself in float32)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.extend.core as jex
import numpy as np

from ._tensors import is_float

# Primitives whose sub-jaxpr is walked into (inlined): name -> the params key holding it.
INLINED = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
}

# Elementwise primitives whose derivative jumps where one operand crosses a scalar other (max(x, 0), x >= 0).
_THRESHOLDS = frozenset({"max", "min", "ge", "gt", "le", "lt"})
# Elementwise primitives whose derivative jumps at 0.
_AT_ZERO = frozenset({"abs", "sign"})


class Kink(NamedTuple):
    """One kink the function evaluated: the input array that meets it, and where (its derivative jumps at
    ``input == at``)."""

    input: np.ndarray
    at: float


def is_relu(closed: Any) -> bool:
    """Whether a custom_jvp body is ``max(x, 0)``: ``jax.nn.relu``."""
    jaxpr = getattr(closed, "jaxpr", closed)
    if len(jaxpr.eqns) != 1 or len(jaxpr.invars) != 1:
        return False
    (eqn,) = jaxpr.eqns
    if eqn.primitive.name in ("jit", "pjit"):  # jax.nn.relu is a jitted max inside the custom_jvp
        return is_relu(eqn.params["jaxpr"])
    literals = [v for v in eqn.invars if isinstance(v, jex.Literal)]
    return eqn.primitive.name == "max" and len(literals) == 1 and float(np.asarray(literals[0].val)) == 0.0


def sub_jaxpr(eqn: Any) -> tuple[Any, tuple[Any, ...]] | None:
    """The ``(jaxpr, consts)`` an equation inlines (see ``INLINED``); None for any other equation."""
    key = INLINED.get(eqn.primitive.name)
    if key is None:
        return None
    sub = eqn.params[key]
    return (sub.jaxpr, tuple(sub.consts)) if hasattr(sub, "consts") else (sub, ())


def kinks(function: Callable[..., Any], *args: Any) -> list[Kink]:
    """Every kink ``function(*args)`` meets, in evaluation order, with the floating array that meets it
    (walking into jitted and custom-derivative calls; loops and conditionals are run whole, unread)."""
    closed = jax.make_jaxpr(function)(*args)
    found: list[Kink] = []
    _evaluate(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args), found)
    return found


def first_narrowing(function: Callable[..., Any], *args: Any) -> tuple[str, str] | None:
    """The first conversion of a floating value to a narrower floating dtype that ``function(*args)`` makes,
    in any sub-jaxpr (``jax.nn.dot_product_attention`` computes its softmax in float32): the two dtype names,
    or None."""
    return _narrowing(jax.make_jaxpr(function)(*args).jaxpr)


def _narrowing(jaxpr: Any) -> tuple[str, str] | None:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "convert_element_type":
            source, target = np.dtype(eqn.invars[0].aval.dtype), np.dtype(eqn.params["new_dtype"])
            if is_float(source) and is_float(target) and target.itemsize < source.itemsize:
                return source.name, target.name
    return next((found for sub in jex.subjaxprs(jaxpr) if (found := _narrowing(sub)) is not None), None)


def _evaluate(jaxpr: Any, consts: Any, args: list[Any], found: list[Kink]) -> list[Any]:
    env: dict[Any, Any] = {}

    def read(atom: Any) -> Any:
        return atom.val if isinstance(atom, jex.Literal) else env[atom]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        inner = sub_jaxpr(eqn)
        if inner is not None:
            sub, sub_consts = inner
            outputs = _evaluate(sub, sub_consts, values[len(values) - len(sub.invars) :], found)
        else:
            found.extend(_kinks_of(eqn.primitive.name, values))
            result = eqn.primitive.bind(*values, **eqn.params)
            outputs = list(result) if eqn.primitive.multiple_results else [result]
        for var, value in zip(eqn.outvars, outputs, strict=True):
            if not isinstance(var, jex.DropVar):
                env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _kinks_of(name: str, values: list[Any]) -> list[Kink]:
    """The kink an elementwise equation meets, if it has one: a floating array against a scalar threshold."""
    if name in _AT_ZERO and _floating_array(values[0]):
        return [Kink(np.asarray(values[0]), 0.0)]
    if name not in _THRESHOLDS or len(values) != 2:
        return []
    for array, threshold in (values, values[::-1]):
        if _floating_array(array) and np.ndim(threshold) == 0 and np.isfinite(np.asarray(threshold, np.float64)):
            return [Kink(np.asarray(array), float(np.asarray(threshold, np.float64)))]
    return []


def _floating_array(value: Any) -> bool:
    return np.ndim(value) > 0 and is_float(np.asarray(value).dtype)
