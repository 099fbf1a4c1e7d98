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
from .._tensors import numpy_dtype, to_numpy, torch_dtype
from ._hints import HintContext
from ._registry import BoundInputs, LayerRule, ParamMap, register

_KERNEL = ParamMap("params", "kernel", "weight", (1, 0))
_BIAS = ParamMap("params", "bias", "bias")


def dense_layout(context: HintContext) -> str | None:
    """An untransposed square kernel, or a bias present on one side only."""
    module = context.torch_module
    if not isinstance(module, torch.nn.Linear):
        return None
    kernel = np.asarray(context.variables["params"]["kernel"], np.float64)
    bias = context.variables["params"].get("bias")
    weight = to_numpy(module.weight).astype(np.float64)
    if weight.shape == kernel.shape and np.array_equal(weight, kernel) and not np.array_equal(kernel, kernel.T):
        return (
            "the Linear weight holds the Dense kernel untransposed: a square kernel loads without a shape error; "
            "torch weight is (out, in), Flax kernel is (in, out): load kernel.T, e.g. "
            "bridge.load_into(model, variables, port)"
        )
    if bias is not None and module.bias is None and context.reproduces(context.x @ kernel):
        return "the torch Linear has no bias but the Flax Dense does: use Linear(..., bias=True) and load the bias"
    if bias is None and module.bias is not None:
        return "the torch Linear has a bias the Flax Dense lacks (use_bias=False): use Linear(..., bias=False)"
    return None


def unpermuted_after_flatten(context: HintContext) -> str | None:
    """torch's ``nn.Flatten`` of NCHW orders features (C, H, W); the Flax Dense after its flatten expects
    (H, W, C): the Linear's weight columns must be permuted to match, else it reads the wrong features."""
    permutation = context.input_permutation
    if permutation is None:
        return None
    params = context.variables["params"]
    kernel = np.asarray(params["kernel"], np.float64)
    reordered = context.x[..., np.argsort(permutation)] @ kernel + np.asarray(params.get("bias", 0.0), np.float64)
    if not context.reproduces(reordered):
        return None
    positions = len(permutation) // _channels(permutation)
    return (
        "torch's flatten of NCHW (nn.Flatten, torch.flatten) orders the features (C, H, W), Flax's (H, W, C), "
        "and this Linear's "
        "weight columns are in Flax's order: permute them, weight = kernel.reshape("
        f"{positions}, {_channels(permutation)}, -1).transpose(1, 0, 2).reshape({len(permutation)}, -1).T, "
        "or call bridge.load_into(model, variables, port, channels_last=False)"
    )


def _channels(permutation: np.ndarray) -> int:
    """C of a flatten permutation ``perm[p * C + c] = c * P + p``: feature (p=1, c=0), index C, is column 1."""
    return int(np.argmax(permutation == 1)) or 1


@register
class DenseRule(LayerRule):
    """``nn.Dense`` / ``nnx.Linear`` over the last axis; ``use_bias=False`` maps to ``Linear(bias=False)``."""

    kind = "Dense"
    hints = (
        dense_layout,
        unpermuted_after_flatten,
    )
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
