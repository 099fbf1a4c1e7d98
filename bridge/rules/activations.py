"""Parameter-free activations used as ``nn.Sequential`` items, and their torch modules: one table.

Each entry maps a JAX function (also reached as ``flax.linen.<name>``) to a torch module, with the
keyword arguments that differ between the two (``partial(jax.nn.leaky_relu, negative_slope=0.2)``
becomes ``LeakyReLU(negative_slope=0.2)``, and back). Flax's ``gelu`` defaults to the tanh
approximation, torch's ``GELU`` to the exact form: the table carries the translation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torch

from .._errors import LayerMismatchError
from .._numerics import function_rounding
from ._hints import HintContext
from ._registry import BoundInputs, LayerRule, register


def softmax_axis(context: HintContext) -> str | None:
    """torch's softmax without ``dim`` picks dim 0 on 3-D inputs; Flax normalises the last axis."""
    if context.kind not in ("softmax", "log_softmax"):
        return None
    function = jax.nn.softmax if context.kind == "softmax" else jax.nn.log_softmax
    for axis in range(context.x.ndim - 1):
        if context.reproduces(function(jnp.asarray(context.x), axis=axis)):
            module = "Softmax" if context.kind == "softmax" else "LogSoftmax"
            return f"torch normalises over dim {axis}, Flax over the last axis: use torch.nn.{module}(dim=-1)"
    return None


class Argument(NamedTuple):
    """One keyword of an activation: its Flax name and default, its torch name, and the value maps."""

    flax_name: str
    torch_name: str
    flax_default: Any
    to_torch: Callable[[Any], Any] = lambda value: value
    to_flax: Callable[[Any], Any] = lambda value: value


class Activation(NamedTuple):
    """An activation in both frameworks. ``slope`` bounds its derivative (how input errors grow). Where its
    derivative jumps (relu at 0) is found in the model's jaxpr by the checker (``bridge._jaxpr.kinks``)."""

    kind: str
    function: Callable[..., jax.Array]
    torch_type: type[torch.nn.Module]
    arguments: tuple[Argument, ...] = ()
    slope: float = 1.0
    exact: bool = False  # computed without rounding (relu): only the input error passes through


def _dim_to_flax(dim: Any) -> int:
    if dim is None:
        raise LayerMismatchError("torch softmax with dim=None picks the axis by rank; construct it with dim=-1")
    return int(dim)


_AXIS = Argument("axis", "dim", -1, to_flax=_dim_to_flax)

ACTIVATIONS: tuple[Activation, ...] = (
    Activation("relu", jax.nn.relu, torch.nn.ReLU, exact=True),
    Activation(
        "gelu",
        jax.nn.gelu,
        torch.nn.GELU,
        (Argument("approximate", "approximate", True, lambda a: "tanh" if a else "none", lambda s: s == "tanh"),),
        slope=1.13,
    ),
    Activation("tanh", jnp.tanh, torch.nn.Tanh),
    Activation("sigmoid", jax.nn.sigmoid, torch.nn.Sigmoid),
    Activation("silu", jax.nn.silu, torch.nn.SiLU, slope=1.1),
    Activation("elu", jax.nn.elu, torch.nn.ELU, (Argument("alpha", "alpha", 1.0),)),
    Activation(
        "leaky_relu",
        jax.nn.leaky_relu,
        torch.nn.LeakyReLU,
        (Argument("negative_slope", "negative_slope", 0.01),),
    ),
    Activation("softplus", jax.nn.softplus, torch.nn.Softplus),
    Activation("selu", jax.nn.selu, torch.nn.SELU, slope=1.76),
    Activation("celu", jax.nn.celu, torch.nn.CELU, (Argument("alpha", "alpha", 1.0),)),
    Activation("hard_tanh", jax.nn.hard_tanh, torch.nn.Hardtanh, exact=True),
    Activation("softmax", jax.nn.softmax, torch.nn.Softmax, (_AXIS,)),
    Activation("log_softmax", jax.nn.log_softmax, torch.nn.LogSoftmax, (_AXIS,), slope=2.0),
)


class ActivationRule(LayerRule):
    """The rule of one ``Activation``; subclasses are made from the table, one per entry."""

    activation: Activation
    stacked_bounds = True
    hints = (softmax_axis,)

    def make_torch(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        values = self.keywords(layer)
        return self.activation.torch_type(
            **{a.torch_name: a.to_torch(values[a.flax_name]) for a in self.activation.arguments}
        )

    def make_flax(self, module: torch.nn.Module) -> Any:
        function = self.activation.function
        changed = {
            a.flax_name: value
            for a in self.activation.arguments
            if (value := a.to_flax(getattr(module, a.torch_name))) != a.flax_default
        }
        return functools.partial(function, **changed) if changed else function

    def keywords(self, layer: Any) -> dict[str, Any]:
        """Every keyword of this activation: the defaults, overridden by those a ``functools.partial`` binds."""
        bound = dict(layer.keywords) if isinstance(layer, functools.partial) else {}
        if isinstance(layer, functools.partial) and layer.args:
            raise LayerMismatchError(
                f"partial({self.kind}, ...) binds positional arguments; bind keywords instead "
                f"({', '.join(a.flax_name for a in self.activation.arguments) or 'none'})"
            )
        known = {a.flax_name for a in self.activation.arguments}
        if unknown := sorted(set(bound) - known):
            raise LayerMismatchError(
                f"partial({self.kind}, ...) binds {', '.join(unknown)}, which the bridge cannot translate "
                f"(it maps: {', '.join(sorted(known)) or 'none'}); register your own rule for it"
            )
        return {a.flax_name: bound.get(a.flax_name, a.flax_default) for a in self.activation.arguments}

    def error_bound(self, layer: Any, variables: Mapping[str, Mapping[str, Any]], bound: BoundInputs) -> np.ndarray:
        slope = self.activation.slope
        if self.activation.kind == "leaky_relu" or self.activation.kind in ("elu", "celu"):
            slope = max(slope, *(abs(float(v)) for v in self.keywords(layer).values()))
        passed = slope * bound.tol_in if bound.tol_in.shape == bound.y.shape else 0.0
        if self.activation.exact:
            return np.broadcast_to(passed, bound.y.shape)
        return passed + function_rounding(bound.x, bound.y, bound.precision.storage, stacked=bound.stacked)


def _register(activation: Activation) -> type[ActivationRule]:
    rule = type(
        f"{activation.kind.title().replace('_', '')}Rule",
        (ActivationRule,),
        {
            "__doc__": f"``{activation.kind}`` <-> ``torch.nn.{activation.torch_type.__name__}``.",
            "activation": activation,
            "kind": activation.kind,
            "flax_keys": (activation.function,),
            "torch_types": (activation.torch_type,),
            "elementwise": _AXIS not in activation.arguments,  # softmax is over an axis: not layout-free
        },
    )
    return register(rule)


ACTIVATION_RULES = tuple(_register(activation) for activation in ACTIVATIONS)
