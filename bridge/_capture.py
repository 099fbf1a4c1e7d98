"""Run both sides of a port and record the output of every position of the chain.

Flax side: the model's own ``apply``, with its ``nn.Sequential`` intercepted so that its items
run one by one (as ``nn.Sequential.__call__`` does) and each output is kept. Torch side: forward
hooks on the children of the torch ``nn.Sequential``, in call order.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import torch

from ._chain import Variables
from ._errors import LayerMismatchError


def flax_layer_outputs(model: nn.Module, variables: Variables, x: Any) -> list[Any]:
    """The output of each item of ``model``'s ``nn.Sequential`` for input ``x`` (the last is the model's output)."""
    outputs: list[Any] = []
    inside = False

    def interceptor(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        nonlocal inside
        if inside or context.method_name != "__call__" or not isinstance(context.module, nn.Sequential):
            return next_fun(*args, **kwargs)
        inside = True
        try:
            hidden = args[0]
            for layer in context.module.layers:
                hidden = layer(hidden)
                outputs.append(hidden)
            return hidden
        finally:
            inside = False

    try:
        with nn.intercept_methods(interceptor):
            model.apply(variables, x)
    except Exception as e:  # the user's model code may raise anything
        where = f"after position {len(outputs) - 1}" if outputs else "at its first layer"
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LayerMismatchError(f"the Flax model failed on inputs of shape {tuple(x.shape)} {where}: {message}") from e
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
    except RuntimeError as e:
        position = len(outputs)
        kind = type(torch_module[position]).__name__ if position < len(torch_module) else "module"
        raise LayerMismatchError(
            f"torch position {position} ({kind}) failed on its input of shape "
            f"{tuple(outputs[-1].shape) if outputs else tuple(x.shape)}: {str(e).splitlines()[0]}"
        ) from e
    finally:
        for handle in handles:
            handle.remove()
    return result, outputs
