"""Trace a Flax model into a jaxpr whose rule-backed layers stay whole: one named ``jit`` equation each.

Inside ``nn.intercept_methods``, each call of a layer that has a rule (Dense, Conv, LayerNorm, Embed,
BatchNorm, ...) runs as ``jax.jit`` of a function named ``layer:<n>``: it appears in
``jax.make_jaxpr(model.apply)`` as one equation whose inputs are the layer's variables then its array
arguments, and ``layers[n]`` says which Flax module it is. Every other module call runs inline under
``jax.named_scope``, so each primitive between layers carries the Flax path of the module it belongs to.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import torch
from flax import nnx

from .._errors import BridgeError, UnsupportedModelError, first_line
from .._flax_model import in_nested_apply
from .._tensors import is_array, to_tensor
from ..capture import nnx_paths, nnx_variables, variables_at
from ..rules import LayerRule, rule_or_none

LAYER_PREFIX = "layer:"
SCOPE_PREFIX = "flax:"


@dataclass(frozen=True)
class TracedLayer:
    """One call of a rule-backed layer: its Flax ``path`` (``Block_0/Dense_1``), the unbound ``module``,
    its concrete ``variables`` (``{collection: {name: array}}``), its ``rule``, how many leading
    inputs of its equation are variables (the rest are the call's arrays), and the torch layer built for it."""

    path: str
    module: nn.Module
    variables: dict[str, Any]
    rule: LayerRule
    n_variables: int
    torch_module: torch.nn.Module


@dataclass(frozen=True)
class Trace:
    """A traced model: the closed jaxpr of ``f(*variable_leaves, *input_arrays)``, what its inputs are
    (``variable_paths``: ``(collection, *path)`` per variable leaf; ``input_names``: one name per array
    input), the output's tree structure and the rule-backed layer calls."""

    jaxpr: Any
    variable_paths: list[tuple[str, ...]]
    variable_values: list[Any]
    input_names: list[str]
    output_tree: Any
    layers: dict[str, TracedLayer]


def trace_model(
    model: nn.Module | nnx.Module, variables: Mapping[str, Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Trace:
    """Trace ``model.apply(variables, *args, **kwargs)`` (an NNX model: ``model(*args, **kwargs)``, its
    variables are its own); array arguments become the traced inputs, other arguments (``train=False``)
    are fixed at their value.

    Raises:
        UnsupportedModelError: when an input is a nested structure rather than an array or a plain value,
            or when the model fails on the inputs.
    """
    names, dynamic, rebuild = _split_inputs(args, kwargs, _argument_names(model, len(args)))
    tracer = _Tracer()
    if isinstance(model, nnx.Module):
        run, trees = _nnx_run(model, tracer, rebuild)
    else:
        trees = {str(k): v for k, v in (variables or {}).items()}
        run = _linen_run(model, trees, tracer, rebuild)
    flat_variables = jax.tree_util.tree_flatten_with_path(trees)[0]
    try:
        closed, output_shape = jax.make_jaxpr(run, return_shape=True)(trees, *dynamic)
    except Exception as e:  # the user's model code may raise anything
        raise UnsupportedModelError(f"tracing the Flax model failed on the given inputs: {first_line(e)}") from e
    return Trace(
        jaxpr=closed,
        variable_paths=[tuple(_key(k) for k in path if _key(k) != "value") for path, _ in flat_variables],
        variable_values=[value for _, value in flat_variables],
        input_names=names,
        output_tree=output_shape,
        layers=tracer.layers,
    )


class _Tracer:
    """What the linen and NNX tracing share: the layers found so far, and whether a layer's own call is
    being traced (its inner module calls are then not layers of their own)."""

    def __init__(self) -> None:
        self.layers: dict[str, TracedLayer] = {}
        self.inside = 0

    def jit_layer(
        self,
        path: tuple[str, ...],
        layer: tuple[Any, LayerRule, dict[str, Any], torch.nn.Module],
        own: Any,
        call_args: Any,
        call_kwargs: Any,
        call: Any,
    ) -> Any:
        """Run ``call(own, args, kwargs)`` as ``jax.jit`` of a function named ``layer:<n>``: one equation."""
        source, rule, concrete, torch_module = layer
        leaves, tree = jax.tree_util.tree_flatten((call_args, call_kwargs))
        positions = [i for i, leaf in enumerate(leaves) if is_array(leaf)]
        key = f"{LAYER_PREFIX}{len(self.layers)}"
        count = len(jax.tree_util.tree_leaves(own))
        self.layers[key] = TracedLayer("/".join(path), source, concrete, rule, count, torch_module)

        def layer_call(own_variables: Any, *arrays: Any) -> Any:
            filled = list(leaves)
            for i, array in zip(positions, arrays, strict=True):
                filled[i] = array
            inner_args, inner_kwargs = jax.tree_util.tree_unflatten(tree, filled)
            self.inside += 1
            try:
                return call(own_variables, inner_args, inner_kwargs)
            finally:
                self.inside -= 1

        layer_call.__name__ = key
        return jax.jit(layer_call)(own, *(leaves[i] for i in positions))


def _linen_run(model: nn.Module, variables: Mapping[str, Any], tracer: _Tracer, rebuild: Any) -> Any:
    """``run(variables, *arrays)``: the model's ``apply`` with its layer calls intercepted."""

    models: list[nn.Module] = []  # the model's own bound module: the first call intercepted

    def interceptor(next_fun: Any, call_args: Any, call_kwargs: Any, context: Any) -> Any:
        module = context.module
        models[:] = models or [module]
        if tracer.inside or context.method_name != "__call__" or module.scope is None:
            return next_fun(*call_args, **call_kwargs)
        if in_nested_apply(module, models[0]):  # run-time weights: traced through, inside its caller's scope
            return next_fun(*call_args, **call_kwargs)
        path = tuple(str(p) for p in module.scope.path)
        layer = _as_layer(module, module.clone(parent=None), variables_at(variables, path), call_args, call_kwargs)
        if layer is None:
            scope = jax.named_scope(SCOPE_PREFIX + ".".join(path)) if path else contextlib.nullcontext()
            with scope:
                return next_fun(*call_args, **call_kwargs)
        clone = layer[0]
        return tracer.jit_layer(
            path, layer, module.variables, call_args, call_kwargs, lambda own, a, k: clone.apply(own, *a, **k)
        )

    def run(variable_tree: Any, *arrays: Any) -> Any:
        call_args, call_kwargs = rebuild(arrays)
        with nn.intercept_methods(interceptor):
            return model.apply(variable_tree, *call_args, **call_kwargs)

    return run


def _nnx_run(model: nnx.Module, tracer: _Tracer, rebuild: Any) -> tuple[Any, dict[str, Any]]:
    """``(run(variables, *arrays), variables)`` for an NNX model: ``variables`` are its ``params`` and
    ``batch_stats`` states; ``run`` merges them back and calls it with the ``__call__`` of every module
    class that has a rule wrapped for the run (NNX has no method interception), restored after."""
    graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)  # type: ignore[misc]
    sources = {path: module for path, module in nnx_paths(model).values() if path}
    classes = {type(m) for m in sources.values() if rule_or_none(m) is not None}

    def run(trees: dict[str, Any], *arrays: Any) -> Any:
        merged = nnx.merge(graphdef, trees["params"], trees["batch_stats"], rest)
        paths = {key: path for key, (path, _) in nnx_paths(merged).items() if path}
        originals = {cls: cls.__call__ for cls in classes}

        def wrap(original: Any) -> Any:
            def wrapper(self: Any, *call_args: Any, **call_kwargs: Any) -> Any:
                path = paths.get(id(self))
                if tracer.inside or path is None:
                    return original(self, *call_args, **call_kwargs)
                source = sources[path]
                layer = _as_layer(source, source, nnx_variables(source), call_args, call_kwargs)
                if layer is None:
                    with jax.named_scope(SCOPE_PREFIX + path.replace("/", ".")):
                        return original(self, *call_args, **call_kwargs)
                own_graph, own = nnx.split(self)
                return tracer.jit_layer(
                    tuple(path.split("/")), layer, own, call_args, call_kwargs,
                    lambda state, a, k: original(nnx.merge(own_graph, state), *a, **k),
                )  # fmt: skip

            return wrapper

        call_args, call_kwargs = rebuild(arrays)
        try:
            for cls, original in originals.items():
                cls.__call__ = wrap(original)  # type: ignore[method-assign]
            return merged(*call_args, **call_kwargs)
        finally:
            for cls, original in originals.items():
                cls.__call__ = original  # type: ignore[method-assign]

    return run, {"params": params, "batch_stats": stats}


def _as_layer(
    module: Any, layer: Any, own: dict[str, Any], args: Any, kwargs: Any
) -> tuple[Any, LayerRule, dict[str, Any], torch.nn.Module] | None:
    """``(layer, rule, its concrete variables, its torch layer)`` when this call becomes one torch layer:
    the module has a rule with tensors whose torch module takes the Flax call's one array (up to a reshape
    of trailing axes: DenseGeneral), and the call has exactly one array argument. None: it is traced
    through, primitive by primitive (exact too, only less familiar to read)."""
    rule = rule_or_none(module)
    if rule is None or (type(rule).torch_call is not LayerRule.torch_call and rule.kind not in _RESHAPED):
        return None
    if sum(is_array(leaf) for leaf in jax.tree_util.tree_leaves((args, kwargs))) != 1:
        return None
    try:
        if not own or not rule.torch_arrays(layer, own):
            return None
        torch_module = _layer_module(rule, layer, own)
    except BridgeError:  # an option the rule does not convert (DenseGeneral over leading axes)
        return None
    return layer, rule, own, torch_module


def _layer_module(rule: LayerRule, layer: nn.Module, variables: dict[str, Any]) -> torch.nn.Module:
    """The rule's torch module for a layer, holding its variables (in torch's layout) and constants."""
    module = rule.make_torch(layer, variables)
    state = {
        name: to_tensor(np.ascontiguousarray(array)) for name, array in rule.torch_arrays(layer, variables).items()
    }
    rule.load_torch(module, layer, variables, state, assign=True)
    for name, buffer in list(module.named_buffers()):
        if buffer.is_meta:  # a counter the rule leaves to torch (BatchNorm's num_batches_tracked)
            owner, _, leaf = name.rpartition(".")
            module.get_submodule(owner).register_buffer(leaf, torch.zeros((), dtype=buffer.dtype))
    return module.eval()


# Rules whose torch module (a Linear) takes the call's array with its trailing axes flattened.
_RESHAPED = frozenset({"DenseGeneral"})


def _key(entry: Any) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))


def _argument_names(model: Any, count: int) -> list[str]:
    """The names of the first ``count`` positional parameters of ``model.__call__`` (``x``, ``inputs``)."""
    try:
        parameters = list(inspect.signature(type(model).__call__).parameters.values())[1:]
    except (TypeError, ValueError):
        parameters = []
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [names[i] if i < len(names) else f"input_{i}" for i in range(count)]


def _split_inputs(
    args: tuple[Any, ...], kwargs: dict[str, Any], positional_names: list[str]
) -> tuple[list[str], list[Any], Any]:
    """``(names, arrays, rebuild)``: the array arguments in order (positional, then keyword), their names,
    and ``rebuild(arrays) -> (args, kwargs)`` with every other argument fixed."""
    names: list[str] = []
    arrays: list[Any] = []
    for name, value in [*zip(positional_names, args, strict=True), *kwargs.items()]:
        if is_array(value):
            names.append(name)
            arrays.append(value)
        elif jax.tree_util.tree_leaves(value, is_leaf=is_array) and any(
            is_array(leaf) for leaf in jax.tree_util.tree_leaves(value)
        ):
            raise UnsupportedModelError(
                f"input {name!r} is a {type(value).__name__} of arrays; to_torch takes arrays (and plain values, "
                "which are fixed) as arguments: pass each array as its own argument"
            )

    def rebuild(values: tuple[Any, ...]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        by_name = dict(zip(names, values, strict=True))
        new_args = tuple(by_name.get(n, a) for n, a in zip(positional_names, args, strict=True))
        return new_args, {k: by_name.get(k, v) for k, v in kwargs.items()}

    return names, arrays, rebuild
