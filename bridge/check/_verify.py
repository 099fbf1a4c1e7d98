"""Convert, then prove it: ``to_torch(check=True)`` and the check of an export run the checker on what the
converter built. It lives here, above ``convert/``, so that conversion never imports the checker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .._arguments import port_keywords
from .._errors import NotEquivalentError
from .._tensors import is_array
from ..capture import Variables
from ..convert import to_torch as convert_to_torch
from ._check import check_equivalence


def to_torch(
    model: Any,
    variables: Variables | None = None,
    inputs: Any = None,
    *,
    copy: bool = True,
    channels_last: bool = True,
    check: bool = False,
) -> torch.nn.Module:
    """``convert.to_torch``, and with ``check=True`` the checker run on the result (on ``inputs``)."""
    module = convert_to_torch(model, variables, inputs, copy=copy, channels_last=channels_last)
    if check:
        verify(model, variables or {}, module, inputs)
    return module


def verify(model: Any, variables: Mapping[str, Any] | None, module: torch.nn.Module, inputs: Any) -> None:
    """Run the equivalence checker on a converted module (outputs per call and gradients).

    Raises:
        NotEquivalentError: carrying the report, when it is not equivalent.
    """
    torch_inputs = _array_inputs(inputs)
    if isinstance(torch_inputs, Mapping):
        torch_inputs = port_keywords(module, torch_inputs)
    report = check_equivalence(model, variables, module, inputs, torch_inputs=torch_inputs)
    if not report.ok:
        where = report.first_divergence
        at = f" first at {where.flax_path!r} <-> {where.torch_name!r}" if where is not None else ""
        raise NotEquivalentError(f"the converted module is not equivalent to the Flax model{at}:\n{report}", report)


def _array_inputs(inputs: Any) -> Any:
    """What the converted module takes of ``inputs``: its arrays only (other values were fixed at trace
    time, ``deterministic=True``); None where that is all of them (the checker converts ``inputs``)."""
    if isinstance(inputs, Mapping):
        arrays: Any = {k: v for k, v in inputs.items() if is_array(v)}
    elif isinstance(inputs, tuple):
        arrays = tuple(v for v in inputs if is_array(v))
    else:
        return None
    return arrays if len(arrays) != len(inputs) else None
