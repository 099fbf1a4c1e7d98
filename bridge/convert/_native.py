"""Any Flax model -> a native torch module: trace (``_jaxpr_trace``), then translate (``_fx_build``).

The result is a ``torch.fx.GraphModule``: real torch layers where the Flax layers have rules, plain torch
calls between them, parameters at the Flax paths. It takes the Flax model's inputs in Flax's layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np
from torch import fx

from .._errors import BridgeError, InvalidArgumentError
from .._flax_model import is_nnx
from .._tensors import is_array
from ._fx_build import build_graph_module
from ._jaxpr_trace import trace_model


def native_module(model: Any, variables: Mapping[str, Any] | None, inputs: Any) -> fx.GraphModule:
    """A torch module computing ``model.apply(variables, inputs)`` (inputs: an array, a tuple of positional
    arguments or a dict of keyword arguments; arrays are its inputs, other values are fixed).

    Raises:
        UnsupportedModelError: naming the JAX primitive and Flax module that have no translation.
    """
    from .._arguments import call_arguments

    if not isinstance(model, nn.Module) and not is_nnx(model):
        raise InvalidArgumentError(f"model must be a flax.linen or nnx Module, not {type(model).__name__}")
    if not is_nnx(model) and not isinstance(variables, Mapping):
        raise InvalidArgumentError(
            f"variables must be what model.init returns (a dict), not {type(variables).__name__}"
        )
    args, kwargs = call_arguments(inputs)
    trace = trace_model(model, variables, args, kwargs)
    module = build_graph_module(trace, type(model).__name__, _twin(model, variables, args, kwargs))
    return module


def _twin(model: Any, variables: Mapping[str, Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The model traced with one more row in every array input that shares the first input's batch size
    (None when it cannot be): the axes that change are the batch axes."""
    arrays = [a for a in (*args, *kwargs.values()) if is_array(a) and np.ndim(a) > 0]
    if not arrays:
        return None
    batch = np.shape(arrays[0])[0]

    def grown(value: Any) -> Any:
        if is_array(value) and np.ndim(value) > 0 and np.shape(value)[0] == batch:
            return np.concatenate([np.asarray(value), np.asarray(value)[:1]])
        return value

    try:
        return trace_model(model, variables, tuple(grown(a) for a in args), {k: grown(v) for k, v in kwargs.items()})
    except BridgeError:  # the model needs this batch size: the module keeps it
        return None
