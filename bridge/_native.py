"""Any Flax model -> a native torch module: trace (``_jaxpr_trace``), translate (``_fx_build``), check.

The result is a ``torch.fx.GraphModule``: real torch layers where the Flax layers have rules, plain torch
calls between them, parameters at the Flax paths. It takes the Flax model's inputs in Flax's layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import torch
from torch import fx

from ._errors import InvalidArgumentError, NotEquivalentError, UnsupportedModelError
from ._flax_model import is_nnx
from ._fx_build import build_graph_module
from ._jaxpr_trace import trace_model


def native_module(model: Any, variables: Mapping[str, Any], inputs: Any, *, check: bool = False) -> fx.GraphModule:
    """A torch module computing ``model.apply(variables, inputs)`` (inputs: an array, a tuple of positional
    arguments or a dict of keyword arguments; arrays are its inputs, other values are fixed).

    Raises:
        UnsupportedModelError: naming the JAX primitive and Flax module that have no translation.
        NotEquivalentError: with ``check=True``, when the checker finds the result not equivalent.
    """
    from ._check_tree import call_arguments

    if is_nnx(model):
        raise UnsupportedModelError(
            "to_torch of an NNX model that is not an nnx.Sequential is not supported yet: convert it to linen "
            "with flax.nnx.bridge.to_linen, or write the port and check it with bridge.check_equivalence"
        )
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a flax.linen or nnx Module, not {type(model).__name__}")
    if not isinstance(variables, Mapping):
        raise InvalidArgumentError(
            f"variables must be what model.init returns (a dict), not {type(variables).__name__}"
        )
    args, kwargs = call_arguments(inputs)
    module = build_graph_module(trace_model(model, variables, args, kwargs), type(model).__name__)
    if check:
        verify(model, variables, module, inputs)
    return module


def verify(model: Any, variables: Mapping[str, Any], module: torch.nn.Module, inputs: Any) -> None:
    """Run the equivalence checker on a converted module (outputs per call and gradients).

    Raises:
        NotEquivalentError: carrying the report, when it is not equivalent.
    """
    from ._check import check_equivalence

    report = check_equivalence(model, variables, module, inputs)
    if not report.ok:
        where = report.first_divergence
        at = f" first at {where.flax_path!r} <-> {where.torch_name!r}" if where is not None else ""
        raise NotEquivalentError(f"the converted module is not equivalent to the Flax model{at}:\n{report}", report)
