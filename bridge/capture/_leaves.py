"""A recorded output as the comparisons read it: its arrays in order (pytrees, dataclasses, Hugging Face output
objects), and a torch output keyed as the Flax one."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import torch

from .._tensors import to_numpy


def output_leaves(value: Any) -> list[np.ndarray]:
    """The arrays of an output, in order, as NumPy copies: pytrees, dataclasses and Hugging Face output
    objects (mappings) alike; None entries (torch's skipped attention weights) are left out."""
    return [to_numpy(a) if isinstance(a, torch.Tensor) else np.asarray(a) for a in array_leaves(value)]


def keyed_like(torch_value: Any, flax_value: Any) -> Any:
    """The torch output with its mappings in the Flax output's key order where both have the same keys
    (leaves are then compared by key), else as it is (compared by position)."""
    if isinstance(torch_value, Mapping) and isinstance(flax_value, Mapping):
        if set(flax_value) <= set(torch_value):
            # the Flax model is the truth: what the port returns besides (a cache of past keys) is not compared
            return {k: keyed_like(torch_value[k], flax_value[k]) for k in flax_value}
        if {str(k) for k in flax_value} <= set(torch_value):  # keys written as text (an Enum's, by the converter)
            return {k: keyed_like(torch_value[str(k)], flax_value[k]) for k in flax_value}
    if (
        isinstance(torch_value, tuple | list)
        and isinstance(flax_value, tuple | list)
        and len(torch_value) == len(flax_value)
    ):
        return [keyed_like(t, f) for t, f in zip(torch_value, flax_value, strict=True)]
    return torch_value


def array_leaves(value: Any) -> list[Any]:
    """The tensors or arrays of an output in order, as they are (``output_leaves`` without the copy)."""
    if isinstance(value, torch.Tensor | jax.Array | np.ndarray):
        return [value]
    if isinstance(value, Mapping):
        return [leaf for v in value.values() for leaf in array_leaves(v)]
    if isinstance(value, tuple | list):
        return [leaf for v in value for leaf in array_leaves(v)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [leaf for f in dataclasses.fields(value) for leaf in array_leaves(getattr(value, f.name))]
    return []
