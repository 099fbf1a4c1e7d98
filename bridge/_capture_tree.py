"""Run a model once and record every module call in execution order: path, kind, inputs, outputs, variables.

Flax (linen): the model's own ``apply`` under ``nn.intercept_methods``; each bound module knows its
``scope.path``, which names it (``Block_0/Dense_1``) and locates its variables. torch: forward pre-hooks
and hooks on every submodule (``blocks.0.fc1``). Both record calls, not modules: a module called twice
(shared weights) gives two calls. Parameter-free functions (``jax.nn.relu``, ``F.relu``) are not calls:
they are the glue between calls, compared through the calls around them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import torch

from ._errors import LayerMismatchError, first_line


@dataclass
class Call:
    """One module call: ``index`` in start order, ``parent`` the index of the call it ran inside (None at
    the top), ``name`` its path (``Block_0/Dense_1`` or ``blocks.0.fc1``; ``""`` for the model itself),
    ``module`` the module (bound, for Flax), ``variables`` its own Flax variables (empty for torch)."""

    index: int
    name: str
    kind: str
    module: Any
    parent: int | None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    variables: dict[str, Any] = field(default_factory=dict)
    children: list[int] = field(default_factory=list)


def capture_flax(
    model: nn.Module, variables: Mapping[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, list[Call]]:
    """``(output, calls)`` of ``model.apply(variables, *args, **kwargs)``; the first call is the model's own.

    Raises:
        LayerMismatchError: when the model fails on these inputs (the message says where).
    """
    calls: list[Call] = []
    stack: list[int] = []

    def interceptor(next_fun: Any, call_args: Any, call_kwargs: Any, context: Any) -> Any:
        if context.method_name != "__call__":
            return next_fun(*call_args, **call_kwargs)
        module = context.module
        path = tuple(module.scope.path) if module.scope is not None else ()
        parent = stack[-1] if stack else None
        call = Call(
            len(calls), "/".join(path), type(module).__name__, module, parent, tuple(call_args), dict(call_kwargs)
        )
        calls.append(call)
        if parent is not None:
            calls[parent].children.append(call.index)
        stack.append(call.index)
        try:
            call.output = next_fun(*call_args, **call_kwargs)
        finally:
            stack.pop()
        call.variables = {str(k): _plain(v) for k, v in module.variables.items()} if module.scope is not None else {}
        return call.output

    try:
        with nn.intercept_methods(interceptor):
            output = model.apply(variables, *args, **kwargs)
    except Exception as e:  # the user's model code may raise anything
        where = next((c.name for c in reversed(calls) if c.output is None), "")
        raise LayerMismatchError(
            f"the Flax model failed{f' in {where!r}' if where else ''} on the given inputs: {first_line(e)}"
        ) from e
    return output, calls


def capture_torch(port: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, list[Call]]:
    """``(output, calls)`` of ``port(*args, **kwargs)``; the first call is the port's own.

    Raises:
        LayerMismatchError: naming the submodule that failed.
    """
    calls: list[Call] = []
    stack: list[int] = []
    names = {id(module): name for name, module in port.named_modules()}

    def before(module: torch.nn.Module, call_args: tuple[Any, ...], call_kwargs: dict[str, Any]) -> None:
        parent = stack[-1] if stack else None
        name = names.get(id(module), "?")
        call = Call(len(calls), name, type(module).__name__, module, parent, tuple(call_args), dict(call_kwargs))
        calls.append(call)
        if parent is not None:
            calls[parent].children.append(call.index)
        stack.append(call.index)

    def after(module: torch.nn.Module, call_args: Any, call_kwargs: Any, output: Any) -> None:
        calls[stack.pop()].output = output

    handles = []
    for module in port.modules():
        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    try:
        output = port(*args, **kwargs)
    except Exception as e:  # the port's code may raise anything
        failed = calls[stack[-1]] if stack else None
        where = f" in {failed.name or 'the port'} ({failed.kind})" if failed else ""
        raise LayerMismatchError(f"the torch port failed{where} on the given inputs: {first_line(e)}") from e
    finally:
        for handle in handles:
            handle.remove()
    return output, calls


def _plain(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {str(k): _plain(v) for k, v in tree.items()}
    return tree
