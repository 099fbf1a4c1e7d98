"""``nn.Embed`` <-> ``torch.nn.Embedding``: the table ``(num_embeddings, features)`` is the weight, as it is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np
import torch
from flax import nnx

from .._errors import LayerMismatchError
from .._tensors import numpy_dtype, torch_dtype
from ._registry import BoundInputs, LayerRule, ParamMap, register

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
