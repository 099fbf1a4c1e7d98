"""One interface over the two Flax APIs: linen (a module plus its variables) and NNX (a stateful module).

Everything the bridge does to the Flax side (run it, differentiate it, cast it) goes through these functions,
so the rest of the package does not care which API built it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ._errors import InvalidArgumentError
from ._tensors import is_float


def is_nnx(model: Any) -> bool:
    """Whether ``model`` is a Flax NNX module (its variables live inside it)."""
    return isinstance(model, nnx.Module)


def apply(model: Any, variables: Any, x: Any) -> Any:
    """The model's output for ``x``."""
    return model(x) if is_nnx(model) else model.apply(variables, x)


def in_nested_apply(module: nn.Module, model: nn.Module) -> bool:
    """Whether a bound linen module runs in an ``apply`` nested inside the model's own
    (``self.conv.apply({"params": {"kernel": w}}, x)``: weight normalisation). Its variables are computed by
    its caller at run time, so its call is part of the caller's computation, not a layer of its own."""
    return module.scope is not None and model.scope is not None and module.scope.root is not model.scope.root


def cast(model: Any, variables: Any, dtype: Any) -> tuple[Any, Any]:
    """Copies of the model and variables with every floating array cast to ``dtype`` (the originals untouched)."""

    def convert(a: Any) -> Any:
        return jnp.asarray(a, dtype) if is_float(jnp.asarray(a).dtype) else a

    if is_nnx(model):
        graphdef, state = nnx.split(model)
        return nnx.merge(graphdef, jax.tree_util.tree_map(convert, state)), None
    return model, jax.tree_util.tree_map(convert, variables)


def own_compute_dtype_error(where: str, layer: Any, target: Any, model: Any) -> InvalidArgumentError:
    """The refusal of ``dtype=`` for a layer that computes in a dtype of its own (``nn.Dense(dtype=...)``)
    which its model fixes, with the two ways out."""
    own = jnp.dtype(layer.dtype).name
    return InvalidArgumentError(
        f"{where} computes in {own} (its dtype=) and dtype={jnp.dtype(target).name} cannot change that inside "
        f"{type(model).__name__}: check with dtype={own!r}, or build the model with dtype=None"
    )


def run_layer(layer: Any, variables: Any, x: Any, **changes: Any) -> Any:
    """Run one layer of the chain on its own, optionally with changed attributes (``epsilon=1e-5``)."""
    if isinstance(layer, nn.Module):
        if isinstance(layer, nn.BatchNorm) and layer.use_running_average is None:  # given per call (Hugging Face's
            changes = {"use_running_average": True, **changes}  # deterministic=...): the bridge compares inference
        return layer.clone(parent=None, **changes).apply(variables, x)
    if isinstance(layer, nnx.Module):
        copy = nnx.clone(layer)
        for name, value in changes.items():
            setattr(copy, name, value)
        return copy(x)
    return layer(x)


def all_variables(model: Any, variables: Any) -> dict[str, Any]:
    """Every variable of a model as nested dicts by collection (``{"params": {...}, "batch_stats": {...}}``):
    linen's ``variables`` as given, an NNX model's read from it (named by attribute path, as its calls are)."""
    if not is_nnx(model):
        return dict(variables or {})
    found: dict[str, Any] = {}
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        collection = "batch_stats" if isinstance(variable, nnx.BatchStat) else "params"
        if not isinstance(variable, nnx.Param | nnx.BatchStat):
            continue  # rng counts and the like: not weights
        node = found.setdefault(collection, {})
        *parents, last = (str(part) for part in path)
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = np.asarray(variable.get_value() if hasattr(variable, "get_value") else variable.value)
    return found
