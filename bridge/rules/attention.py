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
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import torch
from flax import nnx

from .._errors import LayerMismatchError
from ._hints import HintContext
from ._registry import LayerRule, register


def _as_matrix(kernel: np.ndarray, inputs: int) -> np.ndarray:
    """A DenseGeneral kernel ``(*in, *out)`` as a Linear weight ``(prod(out), prod(in))``."""
    shape = kernel.shape
    return np.reshape(kernel, (math.prod(shape[:inputs]), math.prod(shape[inputs:]))).T


def _input_axes(layer: Any) -> int:
    axis = layer.axis
    return len(axis) if isinstance(axis, tuple | list) else 1


def _attention_variant(change: str, head_dim: int, base: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """The layer's own attention function ``base`` with one mistake of a port made in it."""

    def attention(query: jax.Array, key: jax.Array, value: jax.Array, **options: Any) -> jax.Array:
        if change == "swapped":
            query, key = key, query
        elif change == "scale 1/d":
            query = query / np.sqrt(head_dim)
        elif change == "no scale":
            query = query * np.sqrt(head_dim)
        return base(query, key, value, **options)

    return attention


def attention_mistakes(context: HintContext) -> str | None:
    """Swapped query and key, or a softmax scale other than 1/sqrt(head_dim)."""
    params = context.variables.get("params", {})
    kernel = params.get("query", {}).get("kernel")
    if kernel is None or context.torch_out is None:
        return None
    head_dim = int(np.shape(kernel)[-1])
    messages = {
        "swapped": "torch swaps query and key (scores = k @ q^T): compute softmax(q @ k^T / sqrt(d)) @ v",
        "scale 1/d": f"torch scales the scores by 1/d (d = {head_dim}) where Flax scales by 1/sqrt(d): "
        f"divide q @ k^T by sqrt({head_dim}) = {np.sqrt(head_dim):.4g}",
        "no scale": f"torch does not scale the scores; Flax divides q @ k^T by sqrt(d) = {np.sqrt(head_dim):.4g}: "
        "do the same (torch.nn.functional.scaled_dot_product_attention does)",
    }
    for change, message in messages.items():
        variant = _attention_variant(
            change, head_dim, getattr(context.layer, "attention_fn", None) or nn.dot_product_attention
        )
        try:
            mistaken = context.rerun(context.x, attention_fn=variant)
        except Exception:  # an attention module that does not take attention_fn
            return None
        if context.reproduces(mistaken):
            return message
    return None


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
    hints = (attention_mistakes,)
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
