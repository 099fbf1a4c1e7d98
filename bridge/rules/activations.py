"""Parameter-free activations used as ``nn.Sequential`` items, and their torch modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import torch

from ._registry import BoundInputs, LayerRule, register


@register
class ReluRule(LayerRule):
    """``jax.nn.relu`` (also exported as ``flax.linen.relu``) <-> ``torch.nn.ReLU``."""

    kind = "relu"
    flax_keys = (jax.nn.relu,)
    torch_types = (torch.nn.ReLU,)
    kinks = (0.0,)

    def make_torch(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        return torch.nn.ReLU()

    def make_flax(self, module: torch.nn.Module) -> Any:
        return jax.nn.relu

    def error_bound(self, layer: Any, variables: Mapping[str, Mapping[str, Any]], bound: BoundInputs) -> np.ndarray:
        """relu is exact and has slope at most 1: only the input's error passes through."""
        return bound.tol_in
