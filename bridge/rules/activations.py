"""Parameter-free activations used as ``nn.Sequential`` items, and their torch modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import torch

from ._registry import LayerRule, register


@register
class ReluRule(LayerRule):
    """``jax.nn.relu`` (also exported as ``flax.linen.relu``) <-> ``torch.nn.ReLU``."""

    kind = "relu"
    flax_keys = (jax.nn.relu,)
    torch_types = (torch.nn.ReLU,)

    def make_torch(self, layer: Any, variables: Mapping[str, Mapping[str, Any]]) -> torch.nn.Module:
        return torch.nn.ReLU()

    def make_flax(self, module: torch.nn.Module) -> Any:
        return jax.nn.relu
