"""``nn.DenseGeneral`` <-> ``torch.nn.Linear`` (axes flattened) and ``nn.MultiHeadDotProductAttention`` <->
``torch.nn.MultiheadAttention`` (packed ``in_proj``), as measured in ../shared/DESIGN.md.

Flax attention: query/key/value ``kernel (E, h, d)``, ``bias (h, d)``; out ``kernel (h, d, E)``. torch
``nn.MultiheadAttention(E, h, batch_first=True)``: ``in_proj_weight (3E, E)`` is the q, k, v kernels
reshaped to ``(E, E)``, transposed and stacked; ``out_proj.weight`` is the out kernel reshaped and
transposed. Both scale by ``1/sqrt(d)``. A port with separate q/k/v Linears matches the DenseGeneral
calls inside the Flax attention instead (the tree matcher descends when no packed module fits).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np
import torch
from flax import nnx

from .._errors import LayerMismatchError
from ._registry import LayerRule, register


def _as_matrix(kernel: np.ndarray, inputs: int) -> np.ndarray:
    """A DenseGeneral kernel ``(*in, *out)`` as a Linear weight ``(prod(out), prod(in))``."""
    shape = kernel.shape
    return np.reshape(kernel, (math.prod(shape[:inputs]), math.prod(shape[inputs:]))).T


def _input_axes(layer: Any) -> int:
    axis = layer.axis
    return len(axis) if isinstance(axis, tuple | list) else 1


@register
class DenseGeneralRule(LayerRule):
    """``nn.DenseGeneral`` / ``nnx.LinearGeneral`` over the last axes <-> ``torch.nn.Linear`` on the flattened
    axes (tree matching)."""

    kind = "DenseGeneral"
    flax_keys = (nn.DenseGeneral, nnx.LinearGeneral)
    torch_types = ()

    def torch_arrays(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
        axes = layer.axis if isinstance(layer.axis, tuple | list) else (layer.axis,)
        if any(a >= 0 for a in axes) or sorted(axes) != list(range(-len(axes), 0)):
            raise LayerMismatchError(f"axis={layer.axis!r}: only the last axes convert to a torch Linear")
        params = variables["params"]
        arrays = {"weight": _as_matrix(np.asarray(params["kernel"]), _input_axes(layer))}
        if "bias" in params:
            arrays["bias"] = np.reshape(np.asarray(params["bias"]), -1)
        return arrays

    def accepts_torch(self, module: torch.nn.Module) -> bool:
        return isinstance(module, torch.nn.Linear) or super().accepts_torch(module)

    def torch_call(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        x = args[0]
        inputs = _input_axes_of(module, x)
        return module(x.reshape(*x.shape[: x.ndim - inputs], -1))

    def make_torch(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        arrays = self.torch_arrays(layer, variables)
        out_features, in_features = arrays["weight"].shape
        return torch.nn.Linear(in_features, out_features, bias="bias" in arrays, device="meta")


def _input_axes_of(module: torch.nn.Module, x: torch.Tensor) -> int:
    """How many trailing axes of ``x`` a Linear flattens into its ``in_features``."""
    assert isinstance(module, torch.nn.Linear)
    size, axes, wanted = 1, 0, module.in_features
    while size < wanted and axes < x.ndim:
        axes += 1
        size *= x.shape[-axes]
    return axes


@register
class MultiHeadAttentionRule(LayerRule):
    """``nn.MultiHeadDotProductAttention`` / ``nnx.MultiHeadAttention`` (no dropout, default scaling) <->
    ``torch.nn.MultiheadAttention``."""

    kind = "MultiHeadDotProductAttention"
    flax_keys = (nn.MultiHeadDotProductAttention, nnx.MultiHeadAttention)
    torch_types = (torch.nn.MultiheadAttention,)

    def torch_arrays(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
        params = variables["params"]
        try:
            q, k, v, out = (params[name] for name in ("query", "key", "value", "out"))
        except KeyError as e:
            raise LayerMismatchError(f"attention params lack {e}: expected query, key, value and out") from e
        arrays = {
            "in_proj_weight": np.concatenate([_as_matrix(np.asarray(p["kernel"]), 1) for p in (q, k, v)]),
            "out_proj.weight": _as_matrix(np.asarray(out["kernel"]), 2),
        }
        if "bias" in q:
            arrays["in_proj_bias"] = np.concatenate([np.reshape(np.asarray(p["bias"]), -1) for p in (q, k, v)])
        if "bias" in out:
            arrays["out_proj.bias"] = np.asarray(out["bias"])
        return arrays

    def torch_call(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        assert isinstance(module, torch.nn.MultiheadAttention)
        query = args[0]
        key = args[1] if len(args) > 1 and args[1] is not None else kwargs.get("inputs_k", query)
        value = args[2] if len(args) > 2 and args[2] is not None else kwargs.get("inputs_v", key)
        mask = kwargs.get("mask")
        attn_mask = None
        if mask is not None:  # Flax: True attends, (batch, heads, q, k); torch: True is masked out
            full = mask.expand(query.shape[0], module.num_heads, query.shape[-2], key.shape[-2])
            attn_mask = ~full.reshape(-1, query.shape[-2], key.shape[-2]).bool()
        if not module.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        out = module(query, key, value, need_weights=False, attn_mask=attn_mask)[0]
        return out if module.batch_first else out.transpose(0, 1)

    def make_torch(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        arrays = self.torch_arrays(layer, variables)
        embed = arrays["out_proj.weight"].shape[0]
        heads = np.shape(variables["params"]["query"]["kernel"])[1]
        return torch.nn.MultiheadAttention(embed, heads, bias="in_proj_bias" in arrays, batch_first=True)

    def make_flax(self, module: torch.nn.Module) -> Any:
        assert isinstance(module, torch.nn.MultiheadAttention)
        if not module._qkv_same_embed_dim:
            raise LayerMismatchError("torch MultiheadAttention with kdim/vdim != embed_dim has no packed Flax form")
        return nn.MultiHeadDotProductAttention(
            num_heads=module.num_heads, qkv_features=module.embed_dim, use_bias=module.in_proj_bias is not None
        )
