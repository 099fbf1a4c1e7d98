"""LayerNorm, RMSNorm and BatchNorm (inference) <-> their torch modules, epsilons and momenta translated.

Defaults differ between the frameworks (Flax epsilon 1e-6 vs torch 1e-5 for LayerNorm, torch's
machine epsilon for RMSNorm; BatchNorm momentum 0.99 keep-rate vs 0.1 update-rate): the rules
carry the Flax values over explicitly, so a converted model never relies on torch's defaults.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np
import torch
from flax import nnx

from .._errors import LayerMismatchError
from .._numerics import function_rounding
from .._tensors import numpy_dtype, torch_dtype
from ._hints import HintContext
from ._registry import BoundInputs, LayerRule, ParamMap, register
from .torch_layers import FlaxGroupNorm

_SCALE = ParamMap("params", "scale", "weight")
_BIAS = ParamMap("params", "bias", "bias")
_MEAN = ParamMap("batch_stats", "mean", "running_mean")
_VAR = ParamMap("batch_stats", "var", "running_var")


def _last_axis_only(layer: Any, *names: str) -> None:
    for name in names:
        value = getattr(layer, name, -1)
        if value not in (-1, (-1,)):
            raise LayerMismatchError(f"{name}={value!r}: the bridge converts normalisation over the last axis only")


def _features(variables: Mapping[str, Mapping[str, Any]], *names: str) -> tuple[int, Any]:
    for collection in ("params", "batch_stats"):
        for name in names:
            array = variables.get(collection, {}).get(name)
            if array is not None:
                return int(array.shape[-1]), array.dtype
    raise LayerMismatchError("has neither scale nor bias: its width is unknown; give it use_scale=True")


def _affine_maps(use_scale: bool, use_bias: bool) -> tuple[ParamMap, ...]:
    return (_SCALE,) * use_scale + (_BIAS,) * use_bias


def _affine_constants(use_scale: bool, use_bias: bool) -> dict[str, float]:
    """What a torch norm with ``affine=True`` (weight and bias together) holds for the one Flax leaves out."""
    if use_scale == use_bias:
        return {}
    return {"weight": 1.0} if use_bias else {"bias": 0.0}


def _normalised_bound(bound: BoundInputs, scale: Any, centred: bool) -> np.ndarray:
    """Error of ``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis: the input error
    divided by the deviation (twice, for the mean's and variance's share), the roundings of the
    statistics (one-pass variance loses ``u * E[x^2] / var`` of relative accuracy), and the output's."""
    x = bound.x
    mean = x.mean(axis=-1, keepdims=True) if centred else 0.0
    var = np.square(x - mean).mean(axis=-1, keepdims=True)
    square = np.square(x).mean(axis=-1, keepdims=True)
    eps = 1e-12
    deviation = np.sqrt(var + eps)
    s = np.ones(x.shape[-1]) if scale is None else np.abs(np.asarray(scale, np.float64))
    normalised = np.abs(x - mean) / deviation
    passed = 2.0 * s * np.sqrt(np.mean(np.square(bound.tol_in), axis=-1, keepdims=True)) / deviation
    statistics = (
        16.0 * bound.precision.storage * s * (1.0 + normalised) * np.sqrt(x.shape[-1]) * (square + eps) / (var + eps)
    )
    return passed + statistics + function_rounding(bound.x, bound.y, bound.precision.storage)


def batchnorm_statistics_missing(context: HintContext) -> str | None:
    """A torch BatchNorm whose running statistics are still torch's initial ones (mean 0, variance 1) where
    Flax's ``batch_stats`` hold others: the statistics were never loaded (only the parameters were)."""
    module = context.torch_module
    stats = context.variables.get("batch_stats", {})
    if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm) or module.running_mean is None or not stats:
        return None
    running_var = module.running_var
    assert running_var is not None
    path = "/".join(("batch_stats", *context.flax_path))
    missing = []
    for torch_name, tensor, flax_name, initial in (
        ("running_mean", module.running_mean, "mean", 0.0),
        ("running_var", running_var, "var", 1.0),
    ):
        flax = np.asarray(stats.get(flax_name, initial), np.float64)
        if bool(torch.all(tensor == initial)) and not np.all(flax == initial):
            missing.append(f"{torch_name} <- {path}/{flax_name}")
    if not missing:
        return None
    return (
        f"torch {type(module).__name__} still holds its initial running statistics (mean 0, variance 1) but Flax's "
        f"batch_stats differ: load them ({'; '.join(missing)}), e.g. bridge.load_into(model, variables, port, "
        "inputs=...), which fills BatchNorm statistics from batch_stats"
    )


def norm_epsilon(context: HintContext) -> str | None:
    """Normalisation epsilons differ by default (Flax 1e-6; torch LayerNorm/GroupNorm 1e-5, RMSNorm machine eps)."""
    module = context.torch_module
    torch_eps = getattr(module, "eps", None)
    if isinstance(module, torch.nn.RMSNorm) and torch_eps is None:  # torch's default: the dtype's machine epsilon
        torch_eps = torch.finfo(module.weight.dtype if module.weight is not None else torch.float32).eps
    flax_eps = getattr(context.layer, "epsilon", None)
    if module is None or torch_eps is None or flax_eps is None or torch_eps == flax_eps:
        return None
    if context.reproduces(context.rerun(context.x, epsilon=float(torch_eps))):
        fixed = copy.copy(module)  # the port's own module with Flax's epsilon: its class, its other options
        fixed.eps = flax_eps
        example = f", e.g. torch.nn.{fixed!r}" if type(module).__module__.startswith("torch.nn.") else ""
        return (
            f"torch {type(module).__name__} uses eps={torch_eps:g} where Flax {context.kind} uses "
            f"epsilon={flax_eps:g}: construct it with eps={flax_eps:g}{example}"
        )
    return None


@register
class LayerNormRule(LayerRule):
    """``nn.LayerNorm`` / ``nnx.LayerNorm`` <-> ``torch.nn.LayerNorm``: ``scale`` is ``weight``, epsilon kept."""

    kind = "LayerNorm"
    hints = (norm_epsilon,)
    flax_keys = (nn.LayerNorm, nnx.LayerNorm)
    torch_types = (torch.nn.LayerNorm,)

    def param_maps(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> tuple[ParamMap, ...]:
        return _affine_maps(layer.use_scale, layer.use_bias)

    def torch_param_maps(self, module: torch.nn.Module) -> tuple[ParamMap, ...]:
        return _affine_maps(module.weight is not None, module.bias is not None)

    def make_torch(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        _last_axis_only(layer, "reduction_axes", "feature_axes")
        width, dtype = _features(variables, "scale", "bias")
        affine = layer.use_scale or layer.use_bias  # a bias alone: torch's weight holds ones (torch_constants)
        return torch.nn.LayerNorm(
            width, eps=layer.epsilon, elementwise_affine=affine, bias=layer.use_bias, dtype=torch_dtype(dtype)
        )

    def torch_constants(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> Mapping[str, float]:
        return {"weight": 1.0} if layer.use_bias and not layer.use_scale else {}

    def make_flax(self, module: torch.nn.Module) -> Any:
        assert isinstance(module, torch.nn.LayerNorm)
        if len(module.normalized_shape) != 1:
            raise LayerMismatchError(f"normalized_shape={module.normalized_shape}: only the last axis converts")
        return nn.LayerNorm(
            epsilon=module.eps,
            use_scale=module.weight is not None,
            use_bias=module.bias is not None,
            use_fast_variance=False,
        )

    def make_nnx(self, module: torch.nn.Module, rngs: nnx.Rngs) -> Any:
        assert isinstance(module, torch.nn.LayerNorm)
        flax = self.make_flax(module)
        return nnx.LayerNorm(
            module.normalized_shape[0], epsilon=flax.epsilon, use_scale=flax.use_scale, use_bias=flax.use_bias,
            use_fast_variance=False, param_dtype=_dtype(module), rngs=rngs,
        )  # fmt: skip

    def error_bound(self, layer: Any, variables: Mapping[str, Mapping[str, Any]], bound: BoundInputs) -> np.ndarray:
        return _normalised_bound(bound, variables.get("params", {}).get("scale"), centred=True)


@register
class RMSNormRule(LayerRule):
    """``nn.RMSNorm`` / ``nnx.RMSNorm`` <-> ``torch.nn.RMSNorm`` (whose default eps is machine epsilon, not 1e-6)."""

    kind = "RMSNorm"
    hints = (norm_epsilon,)
    flax_keys = (nn.RMSNorm, nnx.RMSNorm)
    torch_types = (torch.nn.RMSNorm,)

    def param_maps(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> tuple[ParamMap, ...]:
        return _affine_maps(layer.use_scale, False)

    def torch_param_maps(self, module: torch.nn.Module) -> tuple[ParamMap, ...]:
        return _affine_maps(module.weight is not None, False)

    def make_torch(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        _last_axis_only(layer, "reduction_axes", "feature_axes")
        width, dtype = _features(variables, "scale")
        return torch.nn.RMSNorm(width, eps=layer.epsilon, elementwise_affine=layer.use_scale, dtype=torch_dtype(dtype))

    def make_flax(self, module: torch.nn.Module) -> Any:
        assert isinstance(module, torch.nn.RMSNorm)
        if module.eps is None:
            raise LayerMismatchError("torch RMSNorm(eps=None) uses the dtype's machine epsilon; set eps explicitly")
        return nn.RMSNorm(epsilon=module.eps, use_scale=module.weight is not None)

    def make_nnx(self, module: torch.nn.Module, rngs: nnx.Rngs) -> Any:
        assert isinstance(module, torch.nn.RMSNorm)
        flax = self.make_flax(module)
        return nnx.RMSNorm(
            module.normalized_shape[0],
            epsilon=flax.epsilon,
            use_scale=flax.use_scale,
            param_dtype=_dtype(module),
            rngs=rngs,
        )

    def error_bound(self, layer: Any, variables: Mapping[str, Mapping[str, Any]], bound: BoundInputs) -> np.ndarray:
        return _normalised_bound(bound, variables.get("params", {}).get("scale"), centred=False)


def _dtype(module: torch.nn.Module) -> Any:
    """The parameter dtype of a torch module, as Flax names it."""
    return numpy_dtype(next(iter(module.state_dict().values())).dtype) if module.state_dict() else np.float32


def _flip(momentum: float) -> float:
    """Keep-rate <-> update-rate (Flax 0.99 is torch 0.01), rounded so that 1 - 0.99 reads 0.01."""
    return round(1.0 - float(momentum), 12)


@register
class BatchNormRule(LayerRule):
    """``nn.BatchNorm`` / ``nnx.BatchNorm`` in inference <-> ``torch.nn.BatchNorm1d`` in eval, on (batch, features).

    ``batch_stats`` ``mean``/``var`` are ``running_mean``/``running_var``; Flax's momentum is a
    keep-rate (0.99) where torch's is an update-rate (0.1): torch momentum = 1 - Flax momentum.
    """

    kind = "BatchNorm"
    hints = (
        batchnorm_statistics_missing,
        norm_epsilon,
    )
    flax_keys = (nn.BatchNorm, nnx.BatchNorm)
    torch_types = (torch.nn.BatchNorm1d,)
    torch_only_keys = ("num_batches_tracked",)

    def param_maps(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> tuple[ParamMap, ...]:
        return (*_affine_maps(layer.use_scale, layer.use_bias), _MEAN, _VAR)

    def torch_param_maps(self, module: torch.nn.Module) -> tuple[ParamMap, ...]:
        return (*_affine_maps(module.weight is not None, module.bias is not None), _MEAN, _VAR)

    def make_torch(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        if getattr(layer, "axis", -1) != -1:
            raise LayerMismatchError(f"axis={layer.axis}: the bridge converts BatchNorm over the last axis only")
        width, dtype = _features(variables, "mean")
        affine = layer.use_scale or layer.use_bias  # one of them alone: the other a constant (torch_constants)
        module = torch.nn.BatchNorm1d(
            width, eps=layer.epsilon, momentum=_flip(layer.momentum), affine=affine, dtype=torch_dtype(dtype)
        )
        return module.eval()

    def torch_constants(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> Mapping[str, float]:
        return _affine_constants(layer.use_scale, layer.use_bias)

    def make_flax(self, module: torch.nn.Module) -> Any:
        assert isinstance(module, torch.nn.BatchNorm1d)
        if module.momentum is None:
            raise LayerMismatchError("torch BatchNorm momentum=None (a cumulative average) has no Flax equivalent")
        if not module.track_running_stats:
            raise LayerMismatchError("torch BatchNorm without running statistics has no Flax inference equivalent")
        return nn.BatchNorm(
            use_running_average=True,
            momentum=_flip(module.momentum),
            epsilon=module.eps,
            use_scale=module.affine,
            use_bias=module.affine,
        )

    def make_nnx(self, module: torch.nn.Module, rngs: nnx.Rngs) -> Any:
        assert isinstance(module, torch.nn.BatchNorm1d)
        flax = self.make_flax(module)
        return nnx.BatchNorm(
            module.num_features, use_running_average=True, momentum=flax.momentum, epsilon=flax.epsilon,
            use_scale=flax.use_scale, use_bias=flax.use_bias, param_dtype=_dtype(module), rngs=rngs,
        )  # fmt: skip

    def error_bound(self, layer: Any, variables: Mapping[str, Mapping[str, Any]], bound: BoundInputs) -> np.ndarray:
        """An elementwise affine map in inference: the input error scaled by ``|scale| / sqrt(var + eps)``."""
        stats = variables["batch_stats"]
        slope = 1.0 / np.sqrt(np.asarray(stats["var"], np.float64) + layer.epsilon)
        scale = variables.get("params", {}).get("scale")
        if scale is not None:
            slope = slope * np.abs(np.asarray(scale, np.float64))
        passed = slope * bound.tol_in if bound.tol_in.shape == bound.y.shape else 0.0
        return passed + function_rounding(bound.x, bound.y, bound.precision.storage)


@register
class GroupNormRule(LayerRule):
    """``nn.GroupNorm`` / ``nnx.GroupNorm`` <-> ``bridge.torch_layers.FlaxGroupNorm`` (channels last, like Flax).

    Flax defaults to 32 groups and epsilon 1e-6, torch's GroupNorm to eps 1e-5: both are carried over.
    """

    kind = "GroupNorm"
    hints = (norm_epsilon,)
    flax_keys = (nn.GroupNorm, nnx.GroupNorm)
    torch_types = (FlaxGroupNorm,)

    def param_maps(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> tuple[ParamMap, ...]:
        return _affine_maps(layer.use_scale, layer.use_bias)

    def torch_param_maps(self, module: torch.nn.Module) -> tuple[ParamMap, ...]:
        return _affine_maps(module.weight is not None, module.bias is not None)

    def make_torch(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        width, dtype = _features(variables, "scale", "bias")
        affine = layer.use_scale or layer.use_bias  # one of them alone: the other a constant (torch_constants)
        return FlaxGroupNorm(_groups(layer, width), width, eps=layer.epsilon, affine=affine, dtype=torch_dtype(dtype))

    def torch_constants(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> Mapping[str, float]:
        return _affine_constants(layer.use_scale, layer.use_bias)

    def make_flax(self, module: torch.nn.Module) -> Any:
        assert isinstance(module, FlaxGroupNorm)
        if not module.channels_last:
            raise LayerMismatchError("a channels-first GroupNorm takes NCHW input; Flax's normalises the last axis")
        return nn.GroupNorm(
            num_groups=module.num_groups, epsilon=module.eps, use_scale=module.affine, use_bias=module.affine
        )

    def make_nnx(self, module: torch.nn.Module, rngs: nnx.Rngs) -> Any:
        assert isinstance(module, FlaxGroupNorm)
        flax = self.make_flax(module)
        return nnx.GroupNorm(
            module.num_channels, num_groups=flax.num_groups, epsilon=flax.epsilon, use_scale=flax.use_scale,
            use_bias=flax.use_bias, param_dtype=_dtype(module), rngs=rngs,
        )  # fmt: skip

    def error_bound(self, layer: Any, variables: Mapping[str, Mapping[str, Any]], bound: BoundInputs) -> np.ndarray:
        """The LayerNorm bound, with the statistics of each group (over its channels and the spatial axes)."""
        x = bound.x
        groups = _groups(layer, x.shape[-1])
        grouped = x.reshape(x.shape[0], -1, groups, x.shape[-1] // groups)
        axes = (1, 3)
        mean = grouped.mean(axis=axes, keepdims=True)
        var = np.square(grouped - mean).mean(axis=axes, keepdims=True) + 1e-12
        square = np.square(grouped).mean(axis=axes, keepdims=True) + 1e-12
        deviation = np.sqrt(var + layer.epsilon)
        tol_in = bound.tol_in.reshape(grouped.shape) if bound.tol_in.shape == x.shape else np.zeros(grouped.shape)
        passed = 2.0 * np.sqrt(np.mean(np.square(tol_in), axis=axes, keepdims=True)) / deviation
        count = grouped.shape[1] * grouped.shape[3]
        statistics = (
            16.0 * bound.precision.storage * (1.0 + np.abs(grouped - mean) / deviation) * np.sqrt(count) * square / var
        )
        scale = variables.get("params", {}).get("scale")
        s = 1.0 if scale is None else np.abs(np.asarray(scale, np.float64))
        amplified = s * np.broadcast_to(passed + statistics, grouped.shape).reshape(x.shape)
        return amplified + function_rounding(bound.x, bound.y, bound.precision.storage)


def _groups(layer: Any, width: int) -> int:
    """Flax's GroupNorm is configured by ``num_groups`` or by ``group_size``."""
    return int(layer.num_groups) if layer.num_groups is not None else width // int(layer.group_size)
