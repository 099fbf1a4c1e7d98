"""The JAX primitive -> torch translation table: one small function per primitive, in one place.

Each function receives the ``Emitter`` (which adds nodes to the torch.fx graph), the jaxpr equation
(its ``params`` and the abstract values of its inputs and outputs) and the translated inputs (fx nodes,
or Python scalars for scalar literals), and returns the translated outputs. Only torch functions,
tensor methods and ``operator.getitem`` are emitted, so the generated code runs with torch alone.
Primitives that carry a sub-jaxpr (``jit``, ``custom_jvp_call``, ...) are inlined by the builder,
not here. A primitive missing from ``TABLE`` is refused by the builder with its Flax module path.
"""

from __future__ import annotations

import operator
import string
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import fx

from .._errors import RuleRegistrationError
from .._tensors import torch_dtype

Arg = Any  # an fx.Node, or a Python scalar (a scalar literal of the jaxpr)
Translation = Callable[["Emitter", Any, list[Arg]], "Arg | list[Arg]"]
TABLE: dict[str, Translation] = {}


_LITERALS = (fx.Node, bool, int, float, str, type(None), slice, type(Ellipsis), torch.dtype, torch.device)


def _literal(value: Any) -> Any:
    """``value`` with every leaf a node or a value fx writes as a Python literal: a numpy scalar (a
    primitive's ``fill_value``) becomes its Python number, since fx would write its ``repr`` into the code
    (``np.float32(2.5)``, a NameError in generated code); anything else is a bug of this table."""
    if isinstance(value, tuple | list):
        return type(value)(_literal(v) for v in value)
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if not isinstance(value, _LITERALS):
        raise TypeError(f"no literal of type {type(value).__name__} may reach generated code")
    return value


class Emitter:
    """Adds calls to a torch.fx graph: ``call`` for torch functions, ``method`` for tensor methods."""

    def __init__(self, graph: fx.Graph, batch_dims: dict[int, tuple[int, ...]] | None = None) -> None:
        self.graph = graph
        self.batch_dims = batch_dims or {}  # id(jaxpr var) -> its axes whose size follows the batch size
        self.batch_input: tuple[fx.Node, int] | None = None  # an input whose axis 0 is the batch, and its size
        self.template: fx.Node | None = None  # an input tensor: new tensors are made on its device
        self._batch_size: fx.Node | None = None

    def sizes(self, var: Any, *, keep: tuple[int, ...] = ()) -> tuple[Any, ...]:
        """``var``'s shape for creating a tensor (``torch.full``, ``expand``): an axis that follows the batch
        size is computed from the batch input's size (``x.size(0) * k``), the others are constants."""
        shape: list[Any] = [int(n) for n in var.aval.shape]
        if self.batch_input is None:
            return tuple(shape)
        node, batch = self.batch_input
        for d in self.batch_dims.get(id(var), ()):
            if d in keep or shape[d] % batch:
                continue
            if self._batch_size is None:
                self._batch_size = self.method("size", node, 0)
            factor = shape[d] // batch
            shape[d] = self._batch_size if factor == 1 else self.call(operator.mul, self._batch_size, factor)
        return tuple(shape)

    def shape(self, var: Any, *, keep: tuple[int, ...] = ()) -> tuple[int, ...]:
        """``var``'s shape as a reshape target: the one axis that follows the batch size (found by tracing
        at two batch sizes) is ``-1``, so the module takes any batch (``torch.export`` with a dynamic
        batch); ``keep``: axes that must stay as they are."""
        shape = [int(n) for n in var.aval.shape]
        varying = [d for d in self.batch_dims.get(id(var), ()) if d not in keep]
        if len(varying) == 1:
            shape[varying[0]] = -1
        return tuple(shape)

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> fx.Node:
        """A node calling a torch function."""
        return self.graph.call_function(function, _literal(args), _literal(kwargs))

    def method(self, name: str, *args: Any, **kwargs: Any) -> fx.Node:
        """A node calling a tensor method on ``args[0]``."""
        return self.graph.call_method(name, _literal(args), _literal(kwargs))

    def tensor(self, value: Arg, aval: Any, like: Arg = None) -> Arg:
        """``value`` as a tensor node: a scalar literal becomes a 0-d tensor made by ``new_full`` from
        ``like`` (an operand of the same dtype) or from the module's input, so it follows the module to
        any device (and, made from ``like``, to any dtype)."""
        if isinstance(value, fx.Node):
            return value
        if isinstance(like, fx.Node):
            return self.method("new_full", like, (), value)
        return self.full((), value, torch_dtype(aval.dtype))

    def full(self, shape: tuple[Any, ...], value: Any, dtype: torch.dtype) -> fx.Node:
        """A new tensor of ``shape`` filled with ``value``, on the module's input's device."""
        if self.template is None:
            return self.call(torch.full, shape, value, dtype=dtype)
        return self.method("new_full", self.template, shape, value, dtype=dtype)

    def device(self) -> Any:
        """The device new tensors are made on: the module's input's (None: torch's default)."""
        return None if self.template is None else self.call(getattr, self.template, "device")


def translates(*names: str) -> Callable[[Translation], Translation]:
    """Decorator: register a translation for the named primitives."""

    def register(function: Translation) -> Translation:
        for name in names:
            _register(name, function)
        return function

    return register


def _register(name: str, function: Translation) -> None:
    """One translation per primitive: a second one for a name is a bug, refused at import."""
    if name in TABLE:
        raise RuleRegistrationError(f"primitive {name!r} has a translation already ({TABLE[name].__qualname__})")
    TABLE[name] = function


def _dtype(aval: Any) -> torch.dtype:
    return torch_dtype(aval.dtype)


def _is_integer(aval: Any) -> bool:
    return bool(np.issubdtype(np.dtype(aval.dtype), np.integer))


def _is_bool(aval: Any) -> bool:
    return np.dtype(aval.dtype) == np.bool_


# --- elementwise -------------------------------------------------------------------------------

_UNARY: dict[str, Callable[..., Any]] = {
    "neg": torch.neg, "abs": torch.abs, "sign": torch.sign, "floor": torch.floor, "ceil": torch.ceil,
    "exp": torch.exp, "exp2": torch.exp2, "expm1": torch.expm1, "log": torch.log, "log1p": torch.log1p,
    "tanh": torch.tanh, "logistic": torch.sigmoid, "sin": torch.sin, "cos": torch.cos, "tan": torch.tan,
    "asin": torch.asin, "acos": torch.acos, "atan": torch.atan, "sinh": torch.sinh, "cosh": torch.cosh,
    "asinh": torch.asinh, "acosh": torch.acosh, "atanh": torch.atanh, "erf": torch.erf, "erfc": torch.erfc,
    "erf_inv": torch.erfinv, "lgamma": torch.lgamma, "digamma": torch.digamma, "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt, "square": torch.square, "is_finite": torch.isfinite, "imag": torch.imag,
    "real": torch.real,
}  # fmt: skip


def _unary(name: str) -> Translation:
    function = _UNARY[name]

    def translate(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
        return emit.call(function, emit.tensor(args[0], eqn.invars[0].aval))

    return translate


for _name in _UNARY:
    _register(_name, _unary(_name))


@translates("cbrt")
def _cbrt(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    x = emit.tensor(args[0], eqn.invars[0].aval)
    return emit.call(torch.mul, emit.call(torch.sign, x), emit.call(torch.pow, emit.call(torch.abs, x), 1.0 / 3.0))


@translates("round")
def _round(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    x = emit.tensor(args[0], eqn.invars[0].aval)
    if int(eqn.params.get("rounding_method", 0)) == 1:  # TO_NEAREST_EVEN, as torch rounds
        return emit.call(torch.round, x)
    away = emit.call(torch.floor, emit.call(torch.add, emit.call(torch.abs, x), 0.5))
    return emit.call(torch.mul, emit.call(torch.sign, x), away)  # AWAY_FROM_ZERO, lax.round's default


_BINARY: dict[str, Callable[..., Any]] = {
    "add": torch.add, "add_any": torch.add, "sub": torch.sub, "mul": torch.mul, "pow": torch.pow,
    "atan2": torch.atan2, "nextafter": torch.nextafter, "eq": torch.eq, "ne": torch.ne, "lt": torch.lt,
    "le": torch.le, "gt": torch.gt, "ge": torch.ge,
}  # fmt: skip


def _binary(name: str) -> Translation:
    function = _BINARY[name]

    def translate(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
        x, y = args
        if not isinstance(x, fx.Node):  # torch's functions take a scalar second, not first
            if name in _COMMUTATIVE and isinstance(y, fx.Node):
                return emit.call(function, y, x)
            if name == "sub" and isinstance(y, fx.Node):
                return emit.call(torch.rsub, y, x)  # x - y
            x = emit.tensor(x, eqn.invars[0].aval, like=y)
        return emit.call(function, x, y)

    return translate


_COMMUTATIVE = frozenset({"add", "add_any", "mul", "eq", "ne"})
for _name in _BINARY:
    _register(_name, _binary(_name))


@translates("div")
def _div(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    x = emit.tensor(args[0], eqn.invars[0].aval, like=args[1])
    if _is_integer(eqn.outvars[0].aval):  # lax.div rounds integers toward zero, as C does
        return emit.call(torch.div, x, args[1], rounding_mode="trunc")
    return emit.call(torch.div, x, args[1])


@translates("rem")
def _rem(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    return emit.call(
        torch.fmod, emit.tensor(args[0], eqn.invars[0].aval, like=args[1]), args[1]
    )  # the sign of the dividend


@translates("max", "min")
def _max_min(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    x, y = args
    if not isinstance(x, fx.Node) and not isinstance(y, fx.Node):
        x = emit.tensor(x, eqn.invars[0].aval)
    if not isinstance(x, fx.Node):
        x, y = y, x
    if not isinstance(y, fx.Node):  # a scalar bound: clamp, which propagates NaN as lax.max does
        return emit.call(torch.clamp, x, **{"min" if eqn.primitive.name == "max" else "max": y})
    return emit.call(torch.maximum if eqn.primitive.name == "max" else torch.minimum, x, y)


@translates("integer_pow")
def _integer_pow(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    return emit.call(torch.pow, emit.tensor(args[0], eqn.invars[0].aval), int(eqn.params["y"]))


@translates("not")
def _not(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    x = emit.tensor(args[0], eqn.invars[0].aval)
    return emit.call(torch.logical_not if _is_bool(eqn.invars[0].aval) else torch.bitwise_not, x)


@translates("and", "or", "xor")
def _logical(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    name = eqn.primitive.name
    logical = _is_bool(eqn.outvars[0].aval)
    function = getattr(torch, f"logical_{name}" if logical else f"bitwise_{name}")
    return emit.call(function, emit.tensor(args[0], eqn.invars[0].aval), emit.tensor(args[1], eqn.invars[1].aval))


@translates("select_n")
def _select_n(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    predicate, *cases = args
    if len(cases) == 1:
        return cases[0]
    if _is_bool(eqn.invars[0].aval):
        return emit.call(torch.where, predicate, cases[1], cases[0])
    result = cases[-1]
    for i in range(len(cases) - 2, -1, -1):  # an integer predicate picks case i where it equals i
        result = emit.call(torch.where, emit.call(torch.eq, predicate, i), cases[i], result)
    return result


@translates("clamp")
def _clamp(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    low, x, high = args
    return emit.call(torch.clamp, emit.tensor(x, eqn.invars[1].aval), low, high)


@translates("convert_element_type")
def _convert(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    x = emit.tensor(args[0], eqn.invars[0].aval)
    if _dtype(eqn.invars[0].aval) == _dtype(eqn.outvars[0].aval):  # weak type only: no cast, so that the
        return x  # module moved to another dtype (module.to(torch.float64)) keeps it
    return emit.method("to", x, _dtype(eqn.outvars[0].aval))


@translates("copy", "copy_p", "optimization_barrier")
def _identity(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg | list[Arg]:
    return args if len(args) > 1 else args[0]


@translates("stop_gradient")
def _stop_gradient(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    return emit.method("detach", emit.tensor(args[0], eqn.invars[0].aval))


# --- shapes --------------------------------------------------------------------------------------


@translates("reshape")
def _reshape(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    if eqn.params.get("dimensions") is not None:
        raise NotImplementedError("reshape with a dimensions permutation")
    return emit.method("reshape", emit.tensor(args[0], eqn.invars[0].aval), emit.shape(eqn.outvars[0]))


@translates("broadcast_in_dim")
def _broadcast_in_dim(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    shape = tuple(eqn.params["shape"])
    if not isinstance(args[0], fx.Node):
        return emit.full(emit.sizes(eqn.outvars[0]), args[0], _dtype(eqn.outvars[0].aval))
    operand_shape = tuple(eqn.invars[0].aval.shape)
    kept = tuple(eqn.params["broadcast_dimensions"])
    view = [1] * len(shape)
    for source, target in enumerate(kept):
        view[target] = operand_shape[source]
    x = args[0]
    if tuple(view) != operand_shape:
        operand = emit.shape(eqn.invars[0])
        x = emit.method("reshape", x, tuple(operand[kept.index(d)] if d in kept else 1 for d in range(len(shape))))
    if tuple(view) == shape:
        return x
    # -1 keeps an axis the operand has; an axis the broadcast creates keeps its size
    created = tuple(d for d in range(len(shape)) if view[d] != shape[d])
    kept_sizes = emit.shape(eqn.outvars[0], keep=created)
    made = emit.sizes(eqn.outvars[0])
    return emit.method("expand", x, tuple(made[d] if d in created else kept_sizes[d] for d in range(len(shape))))


@translates("squeeze", "expand_dims")
def _reshape_to_output(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    return emit.method("reshape", args[0], emit.shape(eqn.outvars[0]))


@translates("transpose")
def _transpose(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    return emit.method("permute", args[0], tuple(eqn.params["permutation"]))


@translates("rev")
def _rev(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    return emit.call(torch.flip, args[0], tuple(eqn.params["dimensions"]))


@translates("concatenate")
def _concatenate(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    tensors = [emit.tensor(a, v.aval) for a, v in zip(args, eqn.invars, strict=True)]
    return emit.call(torch.cat, tensors, eqn.params["dimension"])


@translates("split")
def _split(emit: Emitter, eqn: Any, args: list[Arg]) -> list[Arg]:
    parts = emit.call(torch.split, args[0], [int(n) for n in eqn.params["sizes"]], int(eqn.params["axis"]))
    return [emit.call(operator.getitem, parts, i) for i in range(len(eqn.outvars))]


@translates("pad")
def _pad(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    x, value = args
    config = eqn.params["padding_config"]
    if any(interior for _, _, interior in config):
        raise NotImplementedError("pad with interior padding")
    pads = [int(p) for low, high, _ in reversed(config) for p in (low, high)]
    if not isinstance(value, fx.Node):
        return emit.call(torch.nn.functional.pad, x, pads, value=value)
    # a traced padding value (jnp.pad's constant_values): pad a mask of the original elements alongside
    inside = emit.call(torch.nn.functional.pad, emit.call(torch.ones_like, x), pads, value=0.0)
    padded = emit.call(torch.nn.functional.pad, x, pads, value=0.0)
    return emit.call(torch.where, emit.call(torch.gt, inside, 0.0), padded, value)


@translates("slice")
def _slice(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    strides = eqn.params.get("strides") or (None,) * len(eqn.params["start_indices"])
    sizes = eqn.invars[0].aval.shape
    index = tuple(
        slice(
            int(start) or None,
            None if int(limit) == int(size) else int(limit),  # to the end: any batch size
            None if stride in (None, 1) else int(stride),
        )
        for start, limit, stride, size in zip(
            eqn.params["start_indices"], eqn.params["limit_indices"], strides, sizes, strict=True
        )
    )
    return emit.call(operator.getitem, args[0], index)


@translates("dynamic_slice")
def _dynamic_slice(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    x, *starts = args
    shape = eqn.invars[0].aval.shape
    result = x
    for axis, (start, size) in enumerate(zip(starts, eqn.params["slice_sizes"], strict=True)):
        if size == shape[axis]:
            continue
        if isinstance(start, fx.Node):  # lax clamps the start so that the slice fits
            start = emit.call(torch.clamp, start, 0, int(shape[axis] - size))
        else:
            start = min(max(int(start), 0), int(shape[axis] - size))
        result = emit.call(torch.narrow, result, axis, start, int(size))
    return result


@translates("iota")
def _iota(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    shape, dimension = tuple(eqn.params["shape"]), int(eqn.params["dimension"])
    sizes = emit.sizes(eqn.outvars[0])  # an axis that follows the batch (jnp.arange(batch)) is computed
    values = emit.call(torch.arange, sizes[dimension], dtype=_dtype(eqn.outvars[0].aval), device=emit.device())
    view: list[Any] = [1] * len(shape)
    view[dimension] = -1
    values = emit.method("reshape", values, tuple(view)) if len(shape) > 1 else values
    return (
        values
        if len(shape) <= 1 or all(n == 1 for d, n in enumerate(shape) if d != dimension)
        else (emit.method("expand", values, sizes))
    )


# --- reductions ---------------------------------------------------------------------------------

_REDUCTIONS: dict[str, Callable[..., Any]] = {
    "reduce_sum": torch.sum, "reduce_max": torch.amax, "reduce_min": torch.amin,
    "reduce_and": torch.all, "reduce_or": torch.any,
}  # fmt: skip


@translates(*_REDUCTIONS)
def _reduce(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    axes = tuple(int(a) for a in eqn.params["axes"])
    if not axes:
        return args[0]
    function = _REDUCTIONS[eqn.primitive.name]
    if function in (torch.all, torch.any) and len(axes) > 1:  # these take one dim at a time
        x = args[0]
        for axis in sorted(axes, reverse=True):
            x = emit.call(function, x, axis)
        return x
    return emit.call(function, args[0], axes)


@translates("reduce_prod")
def _reduce_prod(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    x = args[0]
    for axis in sorted((int(a) for a in eqn.params["axes"]), reverse=True):
        x = emit.call(torch.prod, x, axis)
    return x


@translates("argmax", "argmin")
def _argmax(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    (axis,) = eqn.params["axes"]
    function = torch.argmax if eqn.primitive.name == "argmax" else torch.argmin
    return emit.method("to", emit.call(function, args[0], int(axis)), _dtype(eqn.outvars[0].aval))


@translates("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp")
def _cumulative(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    axis, reverse = int(eqn.params["axis"]), bool(eqn.params.get("reverse", False))
    x = emit.call(torch.flip, args[0], (axis,)) if reverse else args[0]
    name = eqn.primitive.name
    function = {"cumsum": torch.cumsum, "cumprod": torch.cumprod, "cumlogsumexp": torch.logcumsumexp}.get(name)
    if function is None:  # cummax / cummin return (values, indices)
        x = emit.call(operator.getitem, emit.call(getattr(torch, name), x, axis), 0)
    else:
        x = emit.call(function, x, axis)
    return emit.call(torch.flip, x, (axis,)) if reverse else x


_WINDOW_INIT = {"reduce_window_sum": 0.0, "reduce_window_max": -float("inf"), "reduce_window_min": float("inf")}
_WINDOW_REDUCE: dict[str, Callable[..., Any]] = {
    "reduce_window_sum": torch.sum,
    "reduce_window_max": torch.amax,
    "reduce_window_min": torch.amin,
}


@translates(*_WINDOW_INIT)
def _reduce_window(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    """Pooling: pad with the reduction's identity, ``unfold`` each windowed axis, reduce the windows."""
    p = eqn.params
    if any(d != 1 for d in (*p["base_dilation"], *p["window_dilation"])):
        raise NotImplementedError(f"{eqn.primitive.name} with dilation")
    name, aval = eqn.primitive.name, eqn.invars[0].aval
    init: float = _WINDOW_INIT[name]
    if _is_integer(aval) and name != "reduce_window_sum":
        info = np.iinfo(np.dtype(aval.dtype))
        init = info.min if name == "reduce_window_max" else info.max
    x = args[0]
    pads = [int(v) for low, high in reversed(p["padding"]) for v in (low, high)]
    if any(pads):
        x = emit.call(torch.nn.functional.pad, x, pads, value=init)
    windowed = [
        (axis, int(size), int(stride))
        for axis, (size, stride) in enumerate(zip(p["window_dimensions"], p["window_strides"], strict=True))
        if size != 1 or stride != 1
    ]
    pooled = _torch_pooling(emit, name, x, windowed, len(aval.shape)) if not _is_integer(aval) else None
    if pooled is not None:
        return pooled
    for axis, size, stride in windowed:
        x = emit.method("unfold", x, axis, size, stride)
    if not windowed:
        return x
    return emit.call(_WINDOW_REDUCE[name], x, tuple(range(-len(windowed), 0)))


def _torch_pooling(emit: Emitter, name: str, x: Arg, windowed: list[tuple[int, int, int]], rank: int) -> Arg | None:
    """Pooling over the spatial axes of an ``(N, *spatial, C)`` array (Flax's layout) as torch's own
    ``max_pool``/``avg_pool`` (a sum: ``divisor_override=1``) on the channels-first view: torch's
    fast kernels. None where the windows are not of that form (``unfold`` then does it)."""
    axes = [axis for axis, _, _ in windowed]
    spatial = len(axes)
    if not 1 <= spatial <= 3 or rank != spatial + 2 or axes != list(range(1, spatial + 1)):
        return None
    kernel = tuple(size for _, size, _ in windowed)
    stride = tuple(step for _, _, step in windowed)
    functional = torch.nn.functional
    pool = {
        # a sum is an average with divisor 1: avg_pool1d has no divisor_override, unfold does 1-D sums
        "reduce_window_sum": (None, functional.avg_pool2d, functional.avg_pool3d)[spatial - 1],
        "reduce_window_max": (functional.max_pool1d, functional.max_pool2d, functional.max_pool3d)[spatial - 1],
        "reduce_window_min": (functional.max_pool1d, functional.max_pool2d, functional.max_pool3d)[spatial - 1],
    }[name]
    if pool is None:
        return None
    channels_first = emit.method("movedim", x, -1, 1)
    if name == "reduce_window_min":  # min = -max(-x)
        channels_first = emit.call(torch.neg, channels_first)
    extra = {"divisor_override": 1} if name == "reduce_window_sum" else {}
    y = emit.call(pool, channels_first, kernel, stride, **extra)
    if name == "reduce_window_min":
        y = emit.call(torch.neg, y)
    return emit.method("movedim", y, 1, -1)


# --- contractions -------------------------------------------------------------------------------


@translates("dot_general")
def _dot_general(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    x, y = args
    out_dtype = _dtype(eqn.outvars[0].aval)
    if _dtype(eqn.invars[0].aval) != out_dtype:  # a wider preferred_element_type: accumulate in it
        x, y = emit.method("to", x, out_dtype), emit.method("to", y, out_dtype)
    lr, rr = len(eqn.invars[0].aval.shape), len(eqn.invars[1].aval.shape)
    batch = tuple(range(len(lb)))
    if (tuple(lb), tuple(rb)) == (batch, batch) and tuple(lc) == (lr - 1,):
        if rr == len(lb) + 2 and tuple(rc) == (rr - 2,):  # (..., n, k) @ (..., k, m): torch.matmul
            return emit.call(torch.matmul, x, y)
        if not lb and rr == 2 and tuple(rc) == (0,):
            return emit.call(torch.matmul, x, y)
    letters = iter(string.ascii_letters)
    lhs = [next(letters) for _ in range(lr)]
    rhs: list[str | None] = [None] * rr
    for a, b in zip((*lb, *lc), (*rb, *rc), strict=True):
        rhs[b] = lhs[a]
    rhs_letters = [r if r is not None else next(letters) for r in rhs]
    out = [lhs[a] for a in lb]
    out += [lhs[a] for a in range(lr) if a not in lb and a not in lc]
    out += [rhs_letters[b] for b in range(rr) if b not in rb and b not in rc]
    equation = f"{''.join(lhs)},{''.join(rhs_letters)}->{''.join(out)}"
    return emit.call(torch.einsum, equation, x, y)


@translates("conv_general_dilated")
def _conv(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    """Any lax convolution: operands moved to torch's (N, C, spatial) / (O, I, spatial), padded, convolved."""
    p = eqn.params
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise NotImplementedError("conv_general_dilated with lhs_dilation (a transposed convolution) or batch groups")
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    spatial = len(lhs_spec) - 2
    if spatial not in (1, 2, 3):
        raise NotImplementedError(f"a {spatial}-D convolution")
    x = emit.method("permute", args[0], tuple(lhs_spec))
    w = emit.method("permute", args[1], tuple(rhs_spec))
    pads = [int(v) for low, high in reversed(p["padding"]) for v in (low, high)]
    if any(pads):
        x = emit.call(torch.nn.functional.pad, x, pads)
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[spatial - 1]
    y = emit.call(
        conv, x, w, None, tuple(p["window_strides"]), 0, tuple(p["rhs_dilation"]), int(p["feature_group_count"])
    )
    return emit.method("permute", y, tuple(int(i) for i in np.argsort(out_spec)))


# --- indexing -----------------------------------------------------------------------------------


@translates("gather")
def _gather(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    """The gathers of ``jnp.take`` and integer-array indexing along one axis: ``index_select`` (indices
    clipped; where ``mode`` is fill, out-of-range indices give the fill value, as in JAX)."""
    p = eqn.params
    numbers = p["dimension_numbers"]
    operand_shape = tuple(eqn.invars[0].aval.shape)
    index_shape = tuple(eqn.invars[1].aval.shape)
    if len(numbers.start_index_map) > 1:
        return _gather_points(emit, eqn, args)
    if (
        len(numbers.start_index_map) != 1
        or tuple(numbers.collapsed_slice_dims) != tuple(numbers.start_index_map)
        or tuple(getattr(numbers, "operand_batching_dims", ()))
        or index_shape[-1:] != (1,)
    ):
        raise NotImplementedError(f"gather with dimension numbers {numbers}")
    (axis,) = numbers.start_index_map
    if any(s != (1 if d == axis else operand_shape[d]) for d, s in enumerate(p["slice_sizes"])):
        raise NotImplementedError(f"gather of partial slices {tuple(p['slice_sizes'])}")
    operand, indices = args
    batch_shape = index_shape[:-1]
    flat = emit.method("reshape", indices, (-1,))
    clipped = emit.call(torch.clamp, flat, 0, operand_shape[axis] - 1)
    picked = emit.call(torch.index_select, operand, axis, clipped)
    # an index axis that follows the batch size (position ids) is -1, so the module takes any batch
    varying = [d for d in emit.batch_dims.get(id(eqn.invars[1]), ()) if d < len(batch_shape)]
    batch_target = tuple(-1 if [d] == varying else n for d, n in enumerate(batch_shape))
    picked = emit.method("reshape", picked, (*operand_shape[:axis], *batch_target, *operand_shape[axis + 1 :]))
    # picked is (operand dims before axis, batch dims, operand dims after); the output puts the operand's
    # dims at offset_dims and the batch dims, in order, everywhere else.
    current = [*range(axis), *(f"b{i}" for i in range(len(batch_shape))), *range(axis, len(operand_shape) - 1)]
    permutation, batch_positions = _gather_order(current, tuple(numbers.offset_dims))
    rank = len(current)
    if permutation != tuple(range(rank)):
        picked = emit.method("permute", picked, permutation)
    if "FILL" not in str(p.get("mode", "")).upper():
        return picked
    valid = emit.call(torch.logical_and, emit.call(torch.ge, flat, 0), emit.call(torch.lt, flat, operand_shape[axis]))
    view = [1] * rank
    for position, size in zip(batch_positions, batch_target, strict=True):
        view[position] = size
    valid = emit.method("reshape", valid, tuple(view))
    fill = p.get("fill_value")
    if fill is None:
        fill = float("nan") if np.issubdtype(np.dtype(eqn.outvars[0].aval.dtype), np.inexact) else 0
    return emit.call(torch.where, valid, picked, fill)


def _gather_points(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    """The gather of integer-array indexing along several axes at once (``x[jnp.arange(b), ids]``: CLIP's
    pooling of the end token of each row): torch's advanced indexing, indices clipped as JAX clips them."""
    p = eqn.params
    numbers = p["dimension_numbers"]
    operand_shape = tuple(eqn.invars[0].aval.shape)
    index_shape = tuple(eqn.invars[1].aval.shape)
    indexed = tuple(numbers.start_index_map)
    if (
        tuple(sorted(numbers.collapsed_slice_dims)) != tuple(sorted(indexed))
        or tuple(getattr(numbers, "operand_batching_dims", ()))
        or index_shape[-1:] != (len(indexed),)
        or "FILL" in str(p.get("mode", "")).upper()
        or any(s != (1 if d in indexed else operand_shape[d]) for d, s in enumerate(p["slice_sizes"]))
    ):
        raise NotImplementedError(f"gather with dimension numbers {numbers}")
    operand, indices = args
    rest = [d for d in range(len(operand_shape)) if d not in indexed]
    moved = (
        emit.method("permute", operand, (*indexed, *rest))
        if list(indexed) + rest != list(range(len(rest) + len(indexed)))
        else operand
    )
    picks = []
    sizes = emit.sizes(eqn.invars[0])  # an indexed axis that follows the batch (the rows) is clipped to its size
    for k, axis in enumerate(indexed):
        column = emit.call(operator.getitem, indices, (Ellipsis, k))
        last = sizes[axis] - 1 if isinstance(sizes[axis], int) else emit.call(operator.sub, sizes[axis], 1)
        picks.append(emit.call(torch.clamp, emit.method("long", column), 0, last))
    picked = emit.call(operator.getitem, moved, tuple(picks))  # (*index batch, *rest)
    current = [*(f"b{i}" for i in range(len(index_shape) - 1)), *range(len(rest))]
    permutation, _ = _gather_order(current, tuple(numbers.offset_dims))
    return picked if permutation == tuple(range(len(current))) else emit.method("permute", picked, permutation)


def _gather_order(current: list[Any], offset_dims: tuple[int, ...]) -> tuple[tuple[int, ...], list[int]]:
    """How a gather's picked values (``current``: the operand's kept dims as ints, the batch dims as ``"b<i>"``)
    are permuted into its output, which puts the operand's dims at ``offset_dims`` and the batch dims, in order,
    everywhere else; and where the batch dims go."""
    batch_positions = [d for d in range(len(current)) if d not in offset_dims]
    kept = iter(sorted(d for d in current if isinstance(d, int)))
    batch = iter(d for d in current if isinstance(d, str))
    wanted = [next(kept) if d in offset_dims else next(batch) for d in range(len(current))]
    return tuple(current.index(w) for w in wanted), batch_positions


@translates("tile")
def _tile(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    """``jnp.tile``: each axis repeated ``reps`` times (``Tensor.repeat``; the batch axis follows its input)."""
    operand = tuple(eqn.invars[0].aval.shape)
    sizes = emit.sizes(eqn.outvars[0])  # an axis of size 1 tiled to the batch size (CLIP's class token) follows it
    given = tuple(int(r) for r in eqn.params["reps"])
    reps = (
        tuple(sizes[d] if operand[d] == 1 else r for d, r in enumerate(given)) if len(given) == len(operand) else given
    )
    return emit.method("repeat", emit.tensor(args[0], eqn.invars[0].aval), reps)


@translates("stack")
def _stack(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    """``jnp.stack``: the operands along a new axis."""
    tensors = [emit.tensor(a, v.aval) for a, v in zip(args, eqn.invars, strict=True)]
    return emit.call(torch.stack, tensors, int(eqn.params["axis"]))


@translates("scatter", "scatter-add")
def _scatter(emit: Emitter, eqn: Any, args: list[Arg]) -> Arg:
    """The scatters of integer-array index updates (``x.at[rows, ids].set(v)``, ``.add(v)``: Wav2Vec2's
    feature mask): ``index_put`` of whole windows, indices out of range dropped (clipped in ``clip`` mode),
    as JAX does."""
    p = eqn.params
    numbers = p["dimension_numbers"]
    operand_shape = tuple(eqn.invars[0].aval.shape)
    index_shape = tuple(eqn.invars[1].aval.shape)
    update_shape = tuple(eqn.invars[2].aval.shape)
    indexed = tuple(numbers.scatter_dims_to_operand_dims)
    rest = [d for d in range(len(operand_shape)) if d not in indexed]
    window = tuple(numbers.update_window_dims)
    if (
        tuple(sorted(numbers.inserted_window_dims)) != tuple(sorted(indexed))
        or tuple(numbers.operand_batching_dims)
        or index_shape[-1:] != (len(indexed),)
        or tuple(update_shape[d] for d in window) != tuple(operand_shape[d] for d in rest)
    ):
        raise NotImplementedError(f"{eqn.primitive.name} with dimension numbers {numbers}")
    operand, indices, updates = (emit.tensor(a, v.aval) for a, v in zip(args, eqn.invars, strict=True))
    order = (*indexed, *rest)
    moved = emit.method("permute", operand, order) if order != tuple(range(len(order))) else operand
    sizes = emit.sizes(eqn.invars[0])
    clip = "CLIP" in str(p.get("mode", "")).upper()
    columns, valid = [], None
    for k, axis in enumerate(indexed):
        column = emit.method("long", emit.call(operator.getitem, indices, (Ellipsis, k)))
        last = sizes[axis] - 1 if isinstance(sizes[axis], int) else emit.call(operator.sub, sizes[axis], 1)
        if clip:
            column = emit.call(torch.clamp, column, 0, last)
        else:
            inside = emit.call(torch.logical_and, emit.call(torch.ge, column, 0), emit.call(torch.le, column, last))
            valid = inside if valid is None else emit.call(torch.logical_and, valid, inside)
        columns.append(column)
    batch = [d for d in range(len(update_shape)) if d not in window]
    if batch + list(window) != list(range(len(update_shape))):
        updates = emit.method("permute", updates, (*batch, *window))
    if valid is not None:  # out-of-range updates are dropped
        columns = [emit.call(operator.getitem, c, valid) for c in columns]
        updates = emit.call(operator.getitem, updates, valid)
    accumulate = eqn.primitive.name == "scatter-add"
    result = emit.method("index_put", moved, tuple(columns), updates, accumulate)
    inverse = tuple(int(i) for i in np.argsort(order))
    return result if inverse == tuple(range(len(order))) else emit.method("permute", result, inverse)
