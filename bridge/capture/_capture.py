"""A chain's positions as calls: in a captured run, the calls its ``nn.Sequential`` made (the tree capture runs a
Sequential's layers one by one, its functions included: ``relu`` is a position); for a load, which runs nothing,
the positions as the discovered steps and the port's children give them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import flax.linen as nn
import torch
from flax import nnx

from .._errors import LayerMismatchError
from ._capture_tree import Call, capture_flax
from ._chain import Step


def positions(calls: Sequence[Call]) -> list[Call]:
    """The calls the first ``nn.Sequential`` (linen, NNX or torch) of a captured run made, in order, each a leaf of
    the chain (what runs inside a position is its own: copies without parent or children).

    Raises:
        LayerMismatchError: a Flax position returned something else than one array.
    """
    sequential = next(
        (c for c in calls if isinstance(c.module, nn.Sequential | nnx.Sequential | torch.nn.Sequential)), None
    )
    found = [] if sequential is None else [replace(calls[i], parent=None, children=[]) for i in sequential.children]
    for index, call in enumerate(found):
        if not isinstance(call.module, torch.nn.Module) and not (
            hasattr(call.output, "shape") and hasattr(call.output, "dtype")
        ):
            raise LayerMismatchError(
                f"layer {index} of the chain returns a {type(call.output).__name__}, not an array: a chain passes one "
                "array from layer to layer; check such a model as a tree (inputs= a tuple, or a port that is not "
                "an nn.Sequential)"
            )
    return found


def flax_layer_outputs(model: Any, variables: Any, x: Any) -> list[Any]:
    """The output of each position of the Flax chain for ``x`` (traceable: the seed sweep vectorises it)."""
    return [call.output for call in positions(capture_flax(model, variables, (x,), {})[1])]


def chain_calls(steps: Sequence[Step]) -> list[Call]:
    """The Flax chain's positions as calls, nothing run (a load): each named by its layer's path (``""`` for a
    function), holding its variables."""
    return [Call(s.index, "/".join(s.flax_path), s.kind, s.layer, None, variables=s.variables) for s in steps]


def torch_positions(torch_module: torch.nn.Sequential) -> list[Call]:
    """Each child of a torch ``nn.Sequential`` as a call named by its position (``"2"``), nothing run (a load)."""
    return [Call(i, str(i), type(child).__name__, child, None) for i, child in enumerate(torch_module)]
