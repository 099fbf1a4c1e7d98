"""``nn.max_pool`` / ``nn.avg_pool`` in an ``nn.Sequential`` (as ``functools.partial``) <->
``bridge.torch_layers.FlaxMaxPool`` / ``FlaxAvgPool``: windows, strides, 'SAME'/'VALID'/explicit padding,
and average pooling with or without the padding counted, as XLA computes them."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from .._errors import LayerMismatchError
from .._numerics import C_DOT, function_rounding
from ._registry import BoundInputs, LayerRule, register
from .conv import flax_padding
from .torch_layers import FlaxAvgPool, FlaxMaxPool, FlaxPool


class _PoolRule(LayerRule):
    module: ClassVar[type[FlaxPool]]
    options: ClassVar[tuple[str, ...]] = ("window_shape", "strides", "padding")

    def keywords(self, layer: Any) -> dict[str, Any]:
        """The pooling's keywords (a ``functools.partial`` must bind ``window_shape``)."""
        bound = dict(layer.keywords) if isinstance(layer, functools.partial) else {}
        if isinstance(layer, functools.partial) and layer.args:
            raise LayerMismatchError(f"partial({self.kind}, ...) binds positional arguments; bind keywords instead")
        if unknown := sorted(set(bound) - set(self.options)):
            raise LayerMismatchError(f"partial({self.kind}, ...) binds {', '.join(unknown)}, which has no torch form")
        if "window_shape" not in bound:
            raise LayerMismatchError(
                f"{self.kind} needs window_shape: functools.partial({self.kind}, window_shape=...)"
            )
        window = tuple(int(w) for w in bound["window_shape"])
        if len(window) not in (1, 2):
            raise LayerMismatchError(f"{self.kind} over {len(window)} spatial axes: the bridge converts 1-D and 2-D")
        strides = tuple(int(s) for s in bound.get("strides") or (1,) * len(window))
        return {
            **bound,
            "window_shape": window,
            "strides": strides,
            "padding": flax_padding(bound.get("padding", "VALID"), len(window)),
        }

    def make_torch(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        k = self.keywords(layer)
        extra = {"count_include_pad": k["count_include_pad"]} if "count_include_pad" in k else {}
        return self.module(k["window_shape"], k["strides"], k["padding"], **extra)

    def make_torch_channels_first(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        module = self.make_torch(layer, variables)
        assert isinstance(module, FlaxPool)
        module.channels_last = False
        return module

    def make_flax(self, module: torch.nn.Module) -> Any:
        assert isinstance(module, FlaxPool)
        padding = module.padding if isinstance(module.padding, str) else [tuple(p) for p in module.padding]
        keywords: dict[str, Any] = {"window_shape": module.window, "strides": module.strides, "padding": padding}
        if "count_include_pad" in self.options:
            keywords["count_include_pad"] = module.count_include_pad
        return functools.partial(self.flax_keys[0], **keywords)  # the function itself (a class attribute would bind)


@register
class MaxPoolRule(_PoolRule):
    """``nn.max_pool``: exact (a maximum rounds nothing); input errors pass through unchanged at most."""

    kind = "max_pool"
    flax_keys = (nn.max_pool,)
    torch_types = (FlaxMaxPool,)
    module = FlaxMaxPool

    def error_bound(self, layer: Any, variables: Mapping[str, Mapping[str, Any]], bound: BoundInputs) -> np.ndarray:
        return np.full(bound.y.shape, np.max(bound.tol_in, initial=0.0))


@register
class AvgPoolRule(_PoolRule):
    """``nn.avg_pool``: a sum of the window (fan-in N) divided by N or by the count of real elements."""

    kind = "avg_pool"
    flax_keys = (nn.avg_pool,)
    torch_types = (FlaxAvgPool,)
    module = FlaxAvgPool
    options = ("window_shape", "strides", "padding", "count_include_pad")

    def error_bound(self, layer: Any, variables: Mapping[str, Mapping[str, Any]], bound: BoundInputs) -> np.ndarray:
        k = self.keywords(layer)
        with jax.enable_x64(True):
            magnitude = np.asarray(
                nn.avg_pool(jnp.asarray(np.abs(bound.x)), k["window_shape"], k["strides"], k["padding"])
            )
        terms = int(np.prod(k["window_shape"]))
        accumulation = C_DOT * np.sqrt(terms) * bound.precision.accumulation * (np.abs(bound.y) + magnitude)
        passed = np.max(bound.tol_in, initial=0.0)
        return passed + accumulation + function_rounding(bound.y, bound.y, bound.precision.storage)
