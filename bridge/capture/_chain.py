"""Discover the ordered chain of layers of a Flax model from the model itself, with no name guessing.

The model is traced once under ``jax.eval_shape`` with ``nn.intercept_methods``: the first
``nn.Sequential`` it calls is the chain; each bound layer of it knows its own ``scope.path``, which
locates its variables whatever the layout (compact, ``setup``, or the Sequential as the model).
The Sequential's layers are never run: its call returns a sentinel, and the model must return that
sentinel untouched and hand the Sequential its own input, so nothing happens outside the chain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from .._errors import InvalidArgumentError, LayerMismatchError, UnsupportedModelError, at_layer, first_line
from .._tensors import plain_tree
from .._validate import require_seed
from ..rules import rule_or_none

Variables = Mapping[str, Any]


@dataclass(frozen=True)
class Step:
    """One position of the chain: the Flax layer (a bound Module or a function) and its variables.

    ``variables`` maps collection -> name -> array (``{"params": {"kernel": ..., "bias": ...}}``),
    empty for parameter-free items such as ``jax.nn.relu``; ``flax_path`` is ``()`` for those.
    """

    index: int
    layer: Any
    flax_path: tuple[str, ...]
    variables: dict[str, dict[str, Any]]

    @property
    def kind(self) -> str:
        """A short name for the layer kind, for messages: ``Dense``, ``relu``."""
        return layer_name(self.layer)

    @property
    def where(self) -> str:
        """How messages name this step: ``layer 2 (Dense at 'Dense_1')``."""
        return at_layer(self.index, self.flax_path, self.kind)


def layer_name(layer: Any) -> str:
    """Name a Flax layer or a function for messages: the class name or the function's ``__name__``."""
    if isinstance(layer, nn.Module | nnx.Module):
        return type(layer).__name__
    func = getattr(layer, "func", None)  # functools.partial
    name = getattr(layer, "__name__", None) or getattr(func, "__name__", None)
    return str(name) if name else type(layer).__name__


class _RefusedSignal(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Stops the trace at the first call that shows the model is not one chain (the reason is kept aside)."""


class _FoundSequential(NamedTuple):
    layers: tuple[Any, ...]
    got_model_input: bool


def discover_chain(model: Any, variables: Variables | None = None) -> tuple[Step, ...]:
    """Return the steps of the ``nn.Sequential`` that ``model`` consists of, in call order.

    Arguments:
        model: a Flax linen module that is an ``nn.Sequential``, or whose ``__call__`` returns the
            result of exactly one ``nn.Sequential`` applied to its input; or an ``nnx.Sequential``.
        variables: what ``model.init`` returned (``{"params": ...}``, plus ``batch_stats`` etc.);
            None for an NNX model, which holds its own.

    Raises:
        UnsupportedModelError: when the model is not such a chain, or holds variables that no layer
            of the chain owns.
    """
    if isinstance(model, nnx.Module):
        if variables is not None:
            raise UnsupportedModelError("an NNX model holds its own variables: pass variables=None")
        return _nnx_chain(model)
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"expected a flax.linen Module, got {type(model).__name__}")
    if not isinstance(variables, Mapping):
        raise UnsupportedModelError(
            f"variables must be the mapping returned by model.init, got {type(variables).__name__}"
        )
    found: list[_FoundSequential] = []
    sentinel = jnp.zeros((1,), jnp.float32)
    returned_sentinel: list[bool] = []

    def interceptor(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        module = context.module
        path = tuple(module.scope.path) if module.scope is not None else ()
        if context.method_name == "setup" or (path == () and not isinstance(module, nn.Sequential)):
            return next_fun(*args, **kwargs)  # the model's own setup and __call__
        if not isinstance(module, nn.Sequential) or context.method_name != "__call__":
            refusals.append(
                f"{type(model).__name__} calls {type(module).__name__}.{context.method_name} at "
                f"'{'/'.join(path)}' outside its nn.Sequential; the bridge converts models that are one "
                "nn.Sequential chain: move every layer into it"
            )
            raise _RefusedSignal
        if found:
            refusals.append(
                f"{type(model).__name__} calls more than one nn.Sequential; "
                "the bridge converts a single chain: nest them in one Sequential"
            )
            raise _RefusedSignal
        given = args[0] if args else None
        found.append(_FoundSequential(tuple(module.layers), given is model_input[0]))
        return sentinel

    model_input: list[Any] = []

    def traced(x: jax.Array) -> jax.Array:
        model_input.append(x)
        with nn.intercept_methods(interceptor):
            out = model.apply(variables, x)
        returned_sentinel.append(out is sentinel)
        return sentinel

    refusals: list[str] = []
    try:
        jax.eval_shape(traced, jax.ShapeDtypeStruct((1,), jnp.float32))
    except _RefusedSignal:
        # Raised afresh here: an error raised inside the trace would carry JAX's traceback notes.
        raise UnsupportedModelError(refusals[0]) from None
    except Exception as e:  # the user's model code may raise anything while traced
        raise UnsupportedModelError(
            f"could not trace {type(model).__name__}.__call__ on a stand-in input to find its layers "
            f"({type(e).__name__}: {first_line(e)}); the bridge supports models whose __call__ takes one array"
        ) from e
    name = type(model).__name__
    if not found:
        raise UnsupportedModelError(
            f"{name} calls no nn.Sequential: the bridge discovers layers from an nn.Sequential "
            "(write the model as nn.Sequential([...]) or return one from @nn.compact __call__)"
        )
    if not found[0].got_model_input or not returned_sentinel[0]:
        raise UnsupportedModelError(
            f"{name} is more than its nn.Sequential: it must pass its input to the Sequential "
            "unchanged and return the Sequential's output unchanged; move the extra work into the chain"
        )
    steps = tuple(_step(i, layer, variables) for i, layer in enumerate(found[0].layers))
    _check_every_variable_is_owned(name, steps, variables)
    for step in steps:
        _check_parameters(step)
    return steps


def chain_or_none(model: Any, variables: Variables | None) -> tuple[Step, ...] | None:
    """The steps of the chain ``model`` is (``discover_chain``), or None for a model that is not one chain."""
    try:
        return discover_chain(model, variables)
    except UnsupportedModelError:
        return None


def _check_parameters(step: Step) -> None:
    """Parameters the bridge can convert and compare: floating point, and no layer of width 0.

    Raises:
        LayerMismatchError: naming the layer and the variable.
    """
    for name, array in step.variables.get("params", {}).items():
        shape = tuple(getattr(array, "shape", ()))
        if 0 in shape:
            raise LayerMismatchError(
                f"{step.where}: params/{name} has shape {shape}: a layer of width 0; give every layer at least one unit"
            )
        if not jnp.issubdtype(getattr(array, "dtype", jnp.float32), jnp.floating):
            raise LayerMismatchError(
                f"{step.where}: params/{name} is {getattr(array, 'dtype', '?')}; the bridge converts floating-point "
                "parameters (set param_dtype to a float dtype)"
            )


def _nnx_chain(model: nnx.Module) -> tuple[Step, ...]:
    """The steps of an ``nnx.Sequential``: its layers, each with its Param and BatchStat variables."""
    if not isinstance(model, nnx.Sequential):
        raise UnsupportedModelError(
            f"{type(model).__name__} is an NNX module but not an nnx.Sequential: the bridge converts one chain"
        )
    steps = []
    for index, layer in enumerate(model.layers):
        owned: dict[str, dict[str, Any]] = {}
        if isinstance(layer, nnx.Module):
            for collection, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
                if state := nnx.to_pure_dict(nnx.state(layer, kind)):
                    owned[collection] = dict(state)
        steps.append(Step(index, layer, ("layers", str(index)) if isinstance(layer, nnx.Module) else (), owned))
    return tuple(steps)


def _step(index: int, layer: Any, variables: Variables) -> Step:
    if not isinstance(layer, nn.Module):
        return Step(index, layer, (), {})
    path = tuple(layer.scope.path) if layer.scope is not None else ()
    return Step(index, layer, path, variables_at(variables, path))


def variables_at(variables: Mapping[str, Any], path: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The variables of the linen module at ``path`` (``("Block_0", "Dense_1")``), per collection that has any."""
    owned: dict[str, dict[str, Any]] = {}
    for collection, tree in variables.items():
        node: Any = tree
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
            if node is None:
                break
        if isinstance(node, Mapping) and node:
            owned[str(collection)] = dict(node)
    return owned


def _check_every_variable_is_owned(name: str, steps: tuple[Step, ...], variables: Variables) -> None:
    owned = {step.flax_path for step in steps if isinstance(step.layer, nn.Module)}
    stray = sorted(
        "/".join(key)
        for key in traverse_util.flatten_dict(plain_tree(variables))
        if not any(key[1:end] in owned for end in range(2, len(key)))  # some prefix of the path is a layer's
    )
    if stray:
        raise UnsupportedModelError(
            f"{name} holds variables that no layer of its nn.Sequential owns: {', '.join(stray)}; "
            "check that the variables were made by this model's init"
        )


def drawn_rows(steps: Sequence[Step], seed: Any, n: Any) -> np.ndarray:
    """``n`` rows of standard normal numbers drawn from ``seed``, shaped as the chain's first layer takes them: the
    inputs a chain model is checked (``n_inputs`` rows) or loaded (two rows) on when none are given.

    Raises:
        InvalidArgumentError: a seed outside [0, 2**32), ``n`` below 1, or a first layer that does not fix the
            input shape (the message says to pass inputs).
    """
    seed = require_seed(seed)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidArgumentError(f"n_inputs must be an integer >= 1, got {n!r}")
    first = steps[0]
    rule = rule_or_none(first.layer)
    drawn = rule.random_input(first.layer, first.variables, np.random.default_rng(seed), n) if rule else None
    if drawn is None:
        raise InvalidArgumentError(
            f"{first.where} does not fix the input shape: pass inputs= (an array shaped like the model's input)"
        )
    return drawn
