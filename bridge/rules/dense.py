"""``nn.Dense`` <-> ``torch.nn.Linear``: kernel ``(in, out)`` is weight ``(out, in)``, bias is bias."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np
import torch
from flax import nnx

from .._errors import LayerMismatchError
from .._numerics import affine_error_bound, propagated_error, squared_products
from .._tensors import numpy_dtype, torch_dtype
from ._registry import BoundInputs, LayerRule, ParamMap, register

_KERNEL = ParamMap("params", "kernel", "weight", (1, 0))
_BIAS = ParamMap("params", "bias", "bias")


@register
class DenseRule(LayerRule):
    """``nn.Dense`` / ``nnx.Linear`` over the last axis; ``use_bias=False`` maps to ``Linear(bias=False)``."""

    kind = "Dense"
    flax_keys = (nn.Dense, nnx.Linear)
    torch_types = (torch.nn.Linear,)
    stacked_bounds = True

    def param_maps(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> tuple[ParamMap, ...]:
        return (_KERNEL, _BIAS) if layer.use_bias else (_KERNEL,)

    def torch_param_maps(self, module: torch.nn.Module) -> tuple[ParamMap, ...]:
        return (_KERNEL, _BIAS) if module.bias is not None else (_KERNEL,)

    def make_torch(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        kernel = variables.get("params", {}).get("kernel")
        if kernel is None or kernel.ndim != 2:
            found = "none" if kernel is None else f"shape {tuple(kernel.shape)}"
            raise LayerMismatchError(f"expected a 2-D 'kernel' (in, out) in params, found {found}")
        in_features, out_features = kernel.shape
        return torch.nn.Linear(
            in_features, out_features, bias=layer.use_bias, dtype=torch_dtype(kernel.dtype), device="meta"
        )

    def make_flax(self, module: torch.nn.Module) -> Any:
        assert isinstance(module, torch.nn.Linear)
        return nn.Dense(features=module.out_features, use_bias=module.bias is not None)

    def make_nnx(self, module: torch.nn.Module, rngs: nnx.Rngs) -> Any:
        assert isinstance(module, torch.nn.Linear)
        return nnx.Linear(
            module.in_features,
            module.out_features,
            use_bias=module.bias is not None,
            param_dtype=numpy_dtype(module.weight.dtype),
            rngs=rngs,
        )

    def random_input(
        self, layer: Any, variables: Mapping[str, Mapping[str, Any]], rng: np.random.Generator, n: int
    ) -> np.ndarray | None:
        kernel = variables["params"]["kernel"]
        return rng.standard_normal((n, kernel.shape[0])).astype(kernel.dtype)

    def error_bound(self, layer: Any, variables: Mapping[str, Mapping[str, Any]], bound: BoundInputs) -> np.ndarray:
        """Accumulation error of ``x @ kernel + bias`` (fan-in K, the bias one more term), the input error
        carried through the kernel, and the output roundings: Flax rounds after the matmul and after the
        bias, torch's F.linear once."""
        params = variables["params"]
        kernel = np.asarray(params["kernel"])  # (seeds..., K, N)
        seeds = kernel.shape[:-2]
        x = bound.x.reshape(*seeds, -1, kernel.shape[-2])
        tol_in = bound.tol_in.reshape(x.shape)
        y = bound.y.reshape(*x.shape[:-1], -1)
        bias = params.get("bias") if layer.use_bias else None
        bias = None if bias is None else np.expand_dims(np.asarray(bias, np.float64), -2)  # (seeds..., 1, N)
        squares = squared_products(x, kernel)
        total = affine_error_bound(squares, bias, y, kernel.shape[-2], bound.precision)
        total = total + propagated_error(tol_in, kernel)
        return total.reshape(bound.y.shape)
