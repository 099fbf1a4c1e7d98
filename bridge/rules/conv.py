"""``nn.Conv`` (1-D and 2-D) <-> ``bridge.torch_layers.FlaxConv1d``/``FlaxConv2d``, and flattening.

Kernel ``(*spatial, in / groups, out)`` is weight ``(out, in / groups, *spatial)``. The torch module
takes the same channels-last input as Flax, so outputs compare directly, and pads as XLA does
('SAME' with stride 2 pads asymmetrically): see ``bridge.torch_layers``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from .._errors import LayerMismatchError
from .._numerics import affine_error_bound
from .._tensors import numpy_dtype, torch_dtype
from ._hints import HintContext
from ._registry import BoundInputs, LayerRule, ParamMap, register
from .torch_layers import ChannelsFirstFlatten, FlaxConv1d, FlaxConv2d, Padding

_BIAS = ParamMap("params", "bias", "bias")


def _kernel_map(spatial: int) -> ParamMap:
    return ParamMap("params", "kernel", "weight", (spatial + 1, spatial, *range(spatial)))


def _tuple(value: Any, n: int, name: str) -> tuple[int, ...]:
    if value is None:
        return (1,) * n
    values = (value,) * n if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != n:
        raise LayerMismatchError(f"{name}={value!r} does not match the kernel's {n} spatial axes")
    return values


def flax_padding(padding: Any, n: int) -> Padding:
    """Flax's padding argument as 'SAME', 'VALID' or one ``(low, high)`` pair per spatial axis."""
    if isinstance(padding, str):
        if str.upper(padding) in ("SAME", "VALID"):  # an exact str: it is written into exported code
            return "SAME" if str.upper(padding) == "SAME" else "VALID"
        raise LayerMismatchError(
            f"padding={padding!r} has no torch equivalent here; use 'SAME', 'VALID' or explicit pairs"
        )
    if isinstance(padding, int):
        return ((padding, padding),) * n
    pairs = tuple((int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in padding)
    if len(pairs) != n:
        raise LayerMismatchError(f"padding={padding!r} does not match the kernel's {n} spatial axes")
    return pairs


def symmetric_padding(context: HintContext) -> str | None:
    """torch's ``padding=k // 2`` pads both sides alike; XLA's 'SAME' pads ``total // 2`` low and the rest high."""
    layer = context.layer
    if context.torch_module is None or getattr(layer, "padding", None) not in ("SAME", "same"):
        return None
    kernel_size = np.shape(context.variables["params"]["kernel"])[:-2]
    dilation = layer.kernel_dilation or 1
    dilations = (dilation,) * len(kernel_size) if isinstance(dilation, int) else tuple(dilation)
    symmetric = [((k - 1) * d // 2, (k - 1) * d // 2) for k, d in zip(kernel_size, dilations, strict=True)]
    if context.reproduces(context.rerun(context.x, padding=symmetric)):
        return (
            f"torch pads symmetrically ({symmetric[0][0]} on each side) where Flax 'SAME' with stride "
            f"{layer.strides} pads total // 2 low and the rest high: pad explicitly with functional.pad and "
            "padding=0 (bridge.torch_layers.FlaxConv2d does)"
        )
    return None


@register
class ConvRule(LayerRule):
    """Convolutions with stride, kernel dilation and feature groups; input dilation and masks are refused."""

    kind = "Conv"
    hints = (symmetric_padding,)
    flax_keys = (nn.Conv, nnx.Conv)
    torch_types = (FlaxConv1d, FlaxConv2d)

    def param_maps(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> tuple[ParamMap, ...]:
        spatial = len(variables["params"]["kernel"].shape) - 2
        return (_kernel_map(spatial), _BIAS) if layer.use_bias else (_kernel_map(spatial),)

    def torch_param_maps(self, module: torch.nn.Module) -> tuple[ParamMap, ...]:
        assert isinstance(module, FlaxConv1d | FlaxConv2d)
        spatial = module.weight.ndim - 2
        return (_kernel_map(spatial), _BIAS) if module.bias is not None else (_kernel_map(spatial),)

    def make_torch(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        kernel = variables.get("params", {}).get("kernel")
        if kernel is None or kernel.ndim not in (3, 4):
            raise LayerMismatchError("expected a 1-D or 2-D convolution kernel (*spatial, in, out) in params")
        spatial = kernel.ndim - 2
        if _tuple(getattr(layer, "input_dilation", None), spatial, "input_dilation") != (1,) * spatial:
            raise LayerMismatchError("input_dilation (a transposed convolution) is not supported")
        if getattr(layer, "mask", None) is not None:
            raise LayerMismatchError("a masked convolution is not supported")
        groups = int(layer.feature_group_count)
        cls = FlaxConv1d if spatial == 1 else FlaxConv2d
        return cls(
            kernel.shape[-2] * groups,
            kernel.shape[-1],
            tuple(kernel.shape[:-2]),
            stride=_tuple(layer.strides, spatial, "strides"),
            dilation=_tuple(layer.kernel_dilation, spatial, "kernel_dilation"),
            groups=groups,
            bias=layer.use_bias,
            flax_padding=flax_padding(layer.padding, spatial),
            dtype=torch_dtype(kernel.dtype),
            device="meta",
        )

    def make_torch_channels_first(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        module = self.make_torch(layer, variables)
        assert isinstance(module, FlaxConv1d | FlaxConv2d)
        module.channels_last = False
        return module

    def make_flax(self, module: torch.nn.Module) -> Any:
        """The Flax Conv (channels-last, as every Flax convolution) of either layout of the torch module."""
        assert isinstance(module, FlaxConv1d | FlaxConv2d)
        padding = module.flax_padding if isinstance(module.flax_padding, str) else list(module.flax_padding)
        return nn.Conv(
            features=module.out_channels,
            kernel_size=tuple(module.kernel_size),
            strides=tuple(module.stride),
            padding=padding,
            kernel_dilation=tuple(module.dilation),
            feature_group_count=module.groups,
            use_bias=module.bias is not None,
        )

    def make_nnx(self, module: torch.nn.Module, rngs: nnx.Rngs) -> Any:
        flax = self.make_flax(module)
        assert isinstance(module, FlaxConv1d | FlaxConv2d)
        return nnx.Conv(
            module.in_channels, flax.features, flax.kernel_size, strides=flax.strides, padding=flax.padding,
            kernel_dilation=flax.kernel_dilation, feature_group_count=flax.feature_group_count,
            use_bias=flax.use_bias, param_dtype=numpy_dtype(module.weight.dtype), rngs=rngs,
        )  # fmt: skip

    def error_bound(self, layer: Any, variables: Mapping[str, Mapping[str, Any]], bound: BoundInputs) -> np.ndarray:
        """The Dense bound with the dot products of a convolution, computed by the layer itself in float64."""
        kernel = np.asarray(variables["params"]["kernel"], np.float64)
        fan_in = int(np.prod(kernel.shape[:-1]))
        with jax.enable_x64(True):
            bare = _unbound(layer).clone(use_bias=False)

            def conv(x: np.ndarray, k: np.ndarray) -> np.ndarray:
                return np.asarray(bare.apply({"params": {"kernel": jnp.asarray(k)}}, jnp.asarray(x)))

            squares = np.maximum(conv(np.square(bound.x), np.square(kernel)), 0.0)
            passed = (
                np.sqrt(conv(np.square(bound.tol_in), np.square(kernel)))
                if bound.tol_in.shape == bound.x.shape and bound.tol_in.any()
                else 0.0
            )
        bias = np.asarray(variables["params"]["bias"], np.float64) if layer.use_bias else None
        return affine_error_bound(squares, bias, bound.y, fan_in, bound.precision) + passed


def _unbound(layer: Any) -> nn.Conv:
    """A linen Conv with the layer's configuration (an NNX Conv is described by its attributes)."""
    if isinstance(layer, nn.Conv):
        return layer.clone(parent=None)
    return nn.Conv(
        features=layer.out_features,
        kernel_size=tuple(layer.kernel_size),
        strides=layer.strides,
        padding=layer.padding,
        kernel_dilation=layer.kernel_dilation,
        feature_group_count=layer.feature_group_count,
        use_bias=layer.use_bias,
    )


def flatten(x: jax.Array) -> jax.Array:
    """Flatten every axis but the first (the batch): put it in an ``nn.Sequential`` between Conv and Dense.

    A lambda would do the same but has no name the bridge can convert; this function maps to
    ``torch.nn.Flatten``, which flattens the same channels-last layout in the same order.
    """
    return x.reshape((x.shape[0], -1))


@register
class FlattenRule(LayerRule):
    """``bridge.flatten`` <-> ``torch.nn.Flatten()`` (start_dim 1, end_dim -1): a reshape, exact; in a
    channels-first model, ``ChannelsFirstFlatten``, which flattens in Flax's (channels-last) order."""

    kind = "flatten"
    flax_keys = (flatten,)
    torch_types = (torch.nn.Flatten, ChannelsFirstFlatten)
    stacked_bounds = True

    def make_torch(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        return torch.nn.Flatten()

    def make_torch_channels_first(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        return ChannelsFirstFlatten()

    def make_flax(self, module: torch.nn.Module) -> Any:
        assert isinstance(module, torch.nn.Flatten)
        if (module.start_dim, module.end_dim) != (1, -1):
            raise LayerMismatchError(f"Flatten({module.start_dim}, {module.end_dim}): only Flatten(1, -1) converts")
        return flatten

    def error_bound(self, layer: Any, variables: Mapping[str, Mapping[str, Any]], bound: BoundInputs) -> np.ndarray:
        return bound.tol_in.reshape(bound.y.shape) if bound.tol_in.size == bound.y.size else np.zeros(bound.y.shape)
