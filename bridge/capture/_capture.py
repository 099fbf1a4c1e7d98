"""Run both sides of a chain port and record every position as a call, as the tree capture records module
calls: a chain is the simplest call tree (one level), whose positions include its functions (``relu``).

Flax side: see ``_flax_model.layer_outputs``. Torch side: forward hooks on the children of the
torch ``nn.Sequential``, in call order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from .._errors import LayerMismatchError, first_line
from .._flax_model import layer_outputs
from ._capture_tree import Call
from ._chain import Step


def flax_layer_outputs(model: Any, variables: Any, x: Any) -> list[Any]:
    """The output of each position of the Flax chain for ``x``; a failure becomes a ``LayerMismatchError``."""
    try:
        outputs = layer_outputs(model, variables, x)
    except Exception as e:  # the user's model code may raise anything
        raise LayerMismatchError(f"the Flax model failed on inputs of shape {tuple(x.shape)}: {first_line(e)}") from e
    for index, output in enumerate(outputs):
        if not hasattr(output, "shape") or not hasattr(output, "dtype"):
            raise LayerMismatchError(
                f"layer {index} of the chain returns a {type(output).__name__}, not an array: a chain passes one "
                "array from layer to layer; check such a model as a tree (inputs= a tuple, or a port that is not "
                "an nn.Sequential)"
            )
    return outputs


def torch_layer_outputs(torch_module: torch.nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(output, outputs of each child in call order)`` of one forward pass of ``torch_module``."""
    outputs: list[torch.Tensor] = []
    hooked = {id(child): child for child in torch_module.children()}
    handles = [
        child.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
        for child in hooked.values()
    ]
    try:
        result = torch_module(x)
    except Exception as e:  # the port's code may raise anything
        position = len(outputs)
        kind = type(torch_module[position]).__name__ if position < len(torch_module) else "module"
        raise LayerMismatchError(
            f"torch position {position} ({kind}) failed on its input of shape "
            f"{tuple(outputs[-1].shape) if outputs else tuple(x.shape)}: {first_line(e)}"
        ) from e
    finally:
        for handle in handles:
            handle.remove()
    return result, outputs


def chain_calls(steps: Sequence[Step], x: Any = None, outputs: Sequence[Any] | None = None) -> list[Call]:
    """The Flax chain's positions as calls (``index`` the position, named by the layer's path; ``""`` for a
    function), each with its input (the output before it) and output, as the tree capture records them; without
    ``outputs`` (nothing run: a load), with neither."""
    if outputs is None:
        return [Call(s.index, "/".join(s.flax_path), s.kind, s.layer, None, variables=s.variables) for s in steps]
    inputs = [x, *outputs[:-1]]
    return [
        Call(s.index, "/".join(s.flax_path), s.kind, s.layer, None, (x_in,), {}, y, s.variables)
        for s, x_in, y in zip(steps, inputs, outputs, strict=True)
    ]


def torch_positions(torch_module: torch.nn.Sequential) -> list[Call]:
    """Each child of a torch ``nn.Sequential`` as a call named by its position (``"2"``), nothing run (a load)."""
    return [Call(i, str(i), type(child).__name__, child, None) for i, child in enumerate(torch_module)]


def torch_chain_calls(torch_module: torch.nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, list[Call]]:
    """``(output, calls)`` of one forward pass of a torch ``nn.Sequential``: its positions (``torch_positions``)
    in call order, each with its input and output."""
    final, outputs = torch_layer_outputs(torch_module, x)
    inputs = [x, *outputs[:-1]]
    return final, [
        dataclasses.replace(call, args=(x_in,), output=y)
        for call, x_in, y in zip(torch_positions(torch_module), inputs, outputs, strict=False)
    ]
