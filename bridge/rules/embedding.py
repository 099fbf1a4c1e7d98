"""``nn.Embed`` <-> ``torch.nn.Embedding``: the table ``(num_embeddings, features)`` is the weight, as it is.
``nn.Embed.attend`` (the output projection tied to the embedding, ``x @ table.T``) <-> a ``torch.nn.Linear``
without bias whose weight ``(num_embeddings, features)`` is the same table, shared or copied."""

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
from ._registry import BoundInputs, LayerRule, ParamMap, register, register_method

_EMBEDDING = ParamMap("params", "embedding", "weight")


@register
class EmbedRule(LayerRule):
    """Integer inputs index rows of the table; lookups are exact."""

    kind = "Embed"
    flax_keys = (nn.Embed, nnx.Embed)
    torch_types = (torch.nn.Embedding,)

    def param_maps(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> tuple[ParamMap, ...]:
        return (_EMBEDDING,)

    def torch_param_maps(self, module: torch.nn.Module) -> tuple[ParamMap, ...]:
        return (_EMBEDDING,)

    def make_torch(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        table = variables.get("params", {}).get("embedding")
        if table is None or table.ndim != 2:
            raise LayerMismatchError("expected a 2-D 'embedding' table (num_embeddings, features) in params")
        rows, features = table.shape
        return torch.nn.Embedding(rows, features, dtype=torch_dtype(table.dtype), device="meta")

    def make_flax(self, module: torch.nn.Module) -> Any:
        assert isinstance(module, torch.nn.Embedding)
        if module.max_norm is not None or module.padding_idx is not None:
            raise LayerMismatchError("torch Embedding with max_norm or padding_idx has no Flax Embed equivalent")
        return nn.Embed(num_embeddings=module.num_embeddings, features=module.embedding_dim)

    def make_nnx(self, module: torch.nn.Module, rngs: nnx.Rngs) -> Any:
        assert isinstance(module, torch.nn.Embedding)
        flax = self.make_flax(module)
        return nnx.Embed(flax.num_embeddings, flax.features, param_dtype=numpy_dtype(module.weight.dtype), rngs=rngs)

    def random_input(
        self, layer: Any, variables: Mapping[str, Mapping[str, Any]], rng: np.random.Generator, n: int
    ) -> np.ndarray:
        rows = int(variables["params"]["embedding"].shape[0])
        return rng.integers(0, rows, size=(n,), dtype=np.int32)

    def error_bound(self, layer: Any, variables: Mapping[str, Mapping[str, Any]], bound: BoundInputs) -> np.ndarray:
        return np.zeros(bound.y.shape)


class EmbedAttendRule(LayerRule):
    """``Embed.attend(x) = x @ table.T`` <-> ``torch.nn.Linear(features, num_embeddings, bias=False)``,
    ``weight = table``. A rule for a method, not a class (``register_method``)."""

    kind = "Embed.attend"
    flax_keys = ()
    torch_types = (torch.nn.Linear,)

    def param_maps(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> tuple[ParamMap, ...]:
        return (_EMBEDDING,)

    def torch_param_maps(self, module: torch.nn.Module) -> tuple[ParamMap, ...]:
        return (_EMBEDDING,)

    def error_bound(self, layer: Any, variables: Mapping[str, Mapping[str, Any]], bound: BoundInputs) -> np.ndarray:
        """A Dense without bias whose kernel is the table transposed (fan-in: the features)."""
        kernel = np.asarray(variables["params"]["embedding"], np.float64).T  # (features, num_embeddings)
        x = bound.x.reshape(-1, kernel.shape[0])
        y = bound.y.reshape(x.shape[0], -1)
        total = affine_error_bound(squared_products(x, kernel), None, y, kernel.shape[0], bound.precision)
        if bound.tol_in.shape == bound.x.shape:
            total = total + propagated_error(bound.tol_in.reshape(x.shape), kernel)
        return total.reshape(bound.y.shape)


register_method((nn.Embed, nnx.Embed), "attend", EmbedAttendRule())
