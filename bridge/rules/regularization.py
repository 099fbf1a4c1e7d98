"""``nn.Dropout`` (deterministic, i.e. inference) <-> ``torch.nn.Dropout`` in eval mode: the identity."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np
import torch
from flax import nnx

from ._registry import BoundInputs, LayerRule, register


@register
class DropoutRule(LayerRule):
    """``rate`` is ``p``; the converted module is in eval mode (a Dropout left training is a bug the checker names)."""

    kind = "Dropout"
    flax_keys = (nn.Dropout, nnx.Dropout)
    torch_types = (torch.nn.Dropout,)
    stacked_bounds = True
    elementwise = True

    def make_torch(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        return torch.nn.Dropout(p=float(layer.rate)).eval()

    def make_flax(self, module: torch.nn.Module) -> Any:
        assert isinstance(module, torch.nn.Dropout)
        return nn.Dropout(rate=module.p, deterministic=True)

    def make_nnx(self, module: torch.nn.Module, rngs: nnx.Rngs) -> Any:
        assert isinstance(module, torch.nn.Dropout)
        return nnx.Dropout(rate=module.p, deterministic=True)

    def error_bound(self, layer: Any, variables: Mapping[str, Mapping[str, Any]], bound: BoundInputs) -> np.ndarray:
        return np.broadcast_to(bound.tol_in, bound.y.shape)
