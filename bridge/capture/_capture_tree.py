"""Run a model once and record every module call in execution order: path, kind, inputs, outputs, variables.

Flax (linen): the model's own ``apply`` under ``nn.intercept_methods``; each bound module knows its
``scope.path``, which names it (``Block_0/Dense_1``) and locates its variables. Flax NNX has no method
interception: every module reachable from the model (``nnx.iter_graph``) is named by its attribute path
(``block/linear1``, ``layers/0``), and the ``__call__`` of their classes is wrapped for the one run (restored
afterwards, whatever happens); a call is recorded when its module is one of the model's. torch: forward pre-hooks
and hooks on every submodule (``blocks.0.fc1``). Both record calls, not modules: a module called twice
(shared weights) gives two calls. Parameter-free functions (``jax.nn.relu``, ``F.relu``) are not calls:
they are the glue between calls, compared through the calls around them, except inside an ``nn.Sequential``
(linen or NNX): its layers run one by one, each a call of its own, functions included, so that a chain's
positions are the children of its Sequential's call (the torch side's are its ``nn.Sequential``'s children).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import torch
from flax import nnx

from .._errors import InvalidArgumentError, LayerMismatchError, UnsupportedModelError, first_line
from .._flax_model import in_nested_apply
from .._tensors import plain_tree
from ..rules import captured_methods, rule_for_call
from ._chain import layer_name
from ._leaves import array_leaves


@dataclass
class Call:
    """One module call: ``index`` in start order, ``parent`` the index of the call it ran inside (None at
    the top), ``name`` its path (``Block_0/Dense_1`` or ``blocks.0.fc1``; ``""`` for the model itself),
    ``module`` the module (bound, for Flax), ``variables`` its own Flax variables (for calls with a rule;
    empty for the others and for torch: copying every composite's subtree would cost depth x size),
    ``method`` the method called (``__call__``, or one with a rule of its own: ``attend``; ``kind`` then
    reads ``Embed.attend``)."""

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
    method: str = "__call__"


class _Recorder:
    """The calls of one run as they start and end, each inside the call that was running when it started."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.stack: list[int] = []
        self.failed: Call | None = None  # the innermost call that raised

    def begin(
        self, module: Any, name: str, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any], method: str
    ) -> Call:
        parent = self.stack[-1] if self.stack else None
        call = Call(len(self.calls), name, kind, module, parent, args, kwargs, method=method)
        self.calls.append(call)
        if parent is not None:
            self.calls[parent].children.append(call.index)
        self.stack.append(call.index)
        return call

    def run(self, call: Call, compute: Any) -> Any:
        """``compute()`` as ``call``'s output (``call`` begun, ended whatever happens)."""
        try:
            call.output = compute()
        except Exception:
            self.failed = self.failed or call
            raise
        finally:
            self.stack.pop()
        return call.output

    def sequential(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """An ``nn.Sequential``'s (linen or NNX) layers applied in order as its ``__call__`` does (a tuple output
        spread as arguments, a dict as keywords), each function a call of its own (modules record themselves)."""
        output: Any = None
        for position, layer in enumerate(module.layers):
            if position > 0:
                args, kwargs = (
                    (output, {})
                    if isinstance(output, tuple)
                    else ((), output)
                    if isinstance(output, dict)
                    else ((output,), {})
                )
            if isinstance(layer, nn.Module | nnx.Module):
                output = layer(*args, **kwargs)
            else:
                call = self.begin(layer, "", layer_name(layer), tuple(args), dict(kwargs), "__call__")
                output = self.run(call, lambda layer=layer, a=args, k=kwargs: layer(*a, **k))
        return output

    def failure(self, side: str, error: Exception, fix: str = "") -> LayerMismatchError:
        """The error for a run that raised, naming the call that failed and the shape of its input."""
        where = ""
        if self.failed is not None and self.failed.parent is not None:
            shapes = [tuple(a.shape) for a in array_leaves(self.failed.args)]
            name = self.failed.name or self.calls[self.failed.parent].name or "the model"
            where = f" in {name!r} ({self.failed.kind})" + (f" on its input of shape {shapes[0]}" if shapes else "")
        return LayerMismatchError(f"the {side} failed{where or ' on the given inputs'}: {first_line(error)}{fix}")


# An nn.Sequential's own __call__ (linen, NNX), read before any capture wraps NNX's: a subclass that overrides it
# (``super().__call__(x) * 2``) runs its own code
_SEQUENTIAL_CALLS = (nn.Sequential.__call__, nnx.Sequential.__call__)


def _runs_positions(module: Any, method: str, own: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a call is an ``nn.Sequential``'s (linen or NNX) ``__call__`` as Flax wrote it (``own``), run here
    one layer at a time."""
    return method == "__call__" and own in _SEQUENTIAL_CALLS and bool(module.layers) and "rngs" not in kwargs


def capture_flax(
    model: nn.Module | nnx.Module, variables: Mapping[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, list[Call]]:
    """``(output, calls)`` of ``model.apply(variables, *args, **kwargs)`` (an NNX model: ``model(*args,
    **kwargs)``, its variables inside it); the first call is the model's own.

    Raises:
        LayerMismatchError: when the model fails on these inputs (the message says where).
        UnsupportedModelError: variables given with an NNX model.
        InvalidArgumentError: an NNX model with a layer in training mode.
    """
    if isinstance(model, nnx.Module):
        if variables:
            raise UnsupportedModelError("an NNX model holds its own variables: pass variables=None")
        return capture_nnx(model, args, kwargs)
    record = _Recorder()

    def interceptor(next_fun: Any, call_args: Any, call_kwargs: Any, context: Any) -> Any:
        method = context.method_name
        module = context.module
        if method != "__call__" and method not in captured_methods(type(module)):
            return next_fun(*call_args, **call_kwargs)
        if record.calls and in_nested_apply(module, record.calls[0].module):
            return next_fun(*call_args, **call_kwargs)
        path = tuple(module.scope.path) if module.scope is not None else ()
        kind = type(module).__name__ if method == "__call__" else f"{type(module).__name__}.{method}"
        call = record.begin(module, "/".join(path), kind, tuple(call_args), dict(call_kwargs), method)
        if _runs_positions(module, method, type(module).__call__, call_kwargs):
            record.run(call, lambda: record.sequential(module, tuple(call_args), dict(call_kwargs)))
        else:
            record.run(call, lambda: next_fun(*call_args, **call_kwargs))
        if module.scope is not None and rule_for_call(module, method) is not None:  # only rules read variables: a
            call.variables = plain_tree(module.variables)  # composite's copy is skipped
        return call.output

    try:
        with nn.intercept_methods(interceptor):
            output = model.apply(variables, *args, **kwargs)
    except Exception as e:  # the user's model code may raise anything
        raise record.failure("Flax model", e) from e
    return output, record.calls


_NO_OWN_CALL = object()


def nnx_paths(model: nnx.Module) -> dict[int, tuple[str, nnx.Module]]:
    """Every NNX module reachable from ``model`` (itself included), by ``id``: its attribute path
    (``block/linear1``; ``""`` for the model) and the module. A module held twice keeps one path."""
    found: dict[int, tuple[str, nnx.Module]] = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module) and id(node) not in found:
            found[id(node)] = ("/".join(str(key) for key in path), node)
    return found


def nnx_variables(module: nnx.Module) -> dict[str, Any]:
    """A module's own Flax variables as the rules read them: ``{"params": ..., "batch_stats": ...}``."""
    owned: dict[str, Any] = {}
    for collection, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        if state := nnx.to_pure_dict(nnx.state(module, kind)):
            owned[collection] = plain_tree(state)
    return owned


def refuse_training_mode(layer: Any, where: str) -> None:
    """Refuse a layer in training mode (NNX Dropout and BatchNorm are by default): random outputs, and statistics
    that running the model would overwrite; linen layers in that mode cannot run without extra arguments at all."""
    if getattr(layer, "deterministic", None) is False or getattr(layer, "use_running_average", None) is False:
        raise InvalidArgumentError(
            f"{where} is in training mode (NNX Dropout and BatchNorm are by default): call model.eval() before "
            "checking, and compare against the torch model in eval mode"
        )


def capture_nnx(model: nnx.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, list[Call]]:
    """``(output, calls)`` of ``model(*args, **kwargs)`` for a Flax NNX model (see the module docstring).
    Modules that a JAX transform (``nnx.jit``, ``nnx.scan``) re-creates inside the run are not the model's
    own objects: their calls are not recorded (the call around them is).

    Raises:
        LayerMismatchError: when the model fails on these inputs (the message says where).
        InvalidArgumentError: when a layer is in training mode (NNX Dropout and BatchNorm are by default).
    """
    modules = nnx_paths(model)
    for path, module in modules.values():
        refuse_training_mode(module, f"{type(module).__name__} at {path or '(model)'!r}")
    record = _Recorder()
    owned: dict[int, dict[str, Any]] = {}

    def wrap(original: Any, method: str) -> Any:
        def call_and_record(module: Any, *call_args: Any, **call_kwargs: Any) -> Any:
            known = modules.get(id(module))
            stack = record.stack
            if known is None or known[1] is not module or (stack and record.calls[stack[-1]].module is module):
                return original(module, *call_args, **call_kwargs)  # not the model's, or a super().__call__
            kind = type(module).__name__ if method == "__call__" else f"{type(module).__name__}.{method}"
            call = record.begin(module, known[0], kind, call_args, dict(call_kwargs), method)
            if _runs_positions(module, method, original, call_kwargs):
                record.run(call, lambda: record.sequential(module, call_args, dict(call_kwargs)))
            else:
                record.run(call, lambda: original(module, *call_args, **call_kwargs))
            if rule_for_call(module, method) is not None:  # only rules read a call's variables: others skip the copy
                if id(module) not in owned:
                    owned[id(module)] = nnx_variables(module)
                call.variables = owned[id(module)]
            return call.output

        return call_and_record

    classes = {type(module) for _, module in modules.values()}
    originals: dict[tuple[type, str], Any] = {}
    for cls in classes:  # resolved before any is wrapped: a subclass calls its base's own __call__
        if any("__call__" in vars(base) for base in cls.__mro__ if base is not object):
            originals[cls, "__call__"] = cls.__call__
        for method in captured_methods(cls):
            originals[cls, method] = getattr(cls, method)
    saved = {key: vars(key[0]).get(key[1], _NO_OWN_CALL) for key in originals}
    try:
        for (cls, method), original in originals.items():
            setattr(cls, method, wrap(original, method))
        try:
            output = model(*args, **kwargs)
        except Exception as e:  # the user's model code may raise anything
            raise record.failure("Flax model", e) from e
    finally:
        for (cls, method), own in saved.items():
            if own is _NO_OWN_CALL:
                if method in vars(cls):
                    delattr(cls, method)
            else:
                setattr(cls, method, own)
    return output, record.calls


def _dtype_hint(port: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A fix to append where the port's floating parameters and its floating inputs differ in dtype."""
    inputs = {a.dtype for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()}
    held = {p.dtype for p in port.parameters() if p.is_floating_point()}
    if len(inputs) != 1 or not held or held == inputs:
        return ""
    (dtype,) = inputs
    return f" (its parameters are {', '.join(sorted(map(str, held)))}, the inputs {dtype}: port.to({dtype}) first)"


def capture_torch(port: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, list[Call]]:
    """``(output, calls)`` of ``port(*args, **kwargs)``; the first call is the port's own.

    Raises:
        LayerMismatchError: naming the submodule that failed.
    """
    record = _Recorder()
    names = {id(module): name for name, module in port.named_modules()}

    def before(module: torch.nn.Module, call_args: tuple[Any, ...], call_kwargs: dict[str, Any]) -> None:
        name = names.get(id(module), "?")
        record.begin(module, name, type(module).__name__, _kept(tuple(call_args)), _kept(dict(call_kwargs)), "__call__")

    def after(module: torch.nn.Module, call_args: Any, call_kwargs: Any, output: Any) -> None:
        record.calls[record.stack.pop()].output = _kept(output)

    handles = []
    for module in port.modules():
        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    try:
        output = port(*args, **kwargs)
    except Exception as e:  # the port's code may raise anything
        record.failed = record.calls[record.stack[-1]] if record.stack else None
        raise record.failure("torch port", e, _dtype_hint(port, args, kwargs)) from e
    finally:
        for handle in handles:
            handle.remove()
    return output, record.calls


def _kept(value: Any) -> Any:
    """A recorded value as it is now: tensors cloned (detached), since a port may change them in place later
    (``hidden += residual`` after a block), which would change what was recorded; containers alike."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_kept(v) for v in value)
    if isinstance(value, list):
        return [_kept(v) for v in value]
    if isinstance(value, dict) and type(value) is dict:
        return {k: _kept(v) for k, v in value.items()}
    if isinstance(value, Mapping):  # a Hugging Face output object: its tensors cloned, its type kept
        try:
            copy = type(value)(**{k: _kept(v) for k, v in value.items()})
        except Exception:  # a mapping built otherwise: kept as it is
            return value
        return copy
    return value
