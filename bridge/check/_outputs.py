"""A model's outputs and calls' outputs as the comparisons read them: their arrays in order (pytrees,
dataclasses, Hugging Face output objects), the torch ones keyed and laid out as the Flax ones."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import torch

from .._tensors import is_float, to_numpy


def output_leaves(value: Any) -> list[np.ndarray]:
    """The arrays of an output, in order, as NumPy copies: pytrees, dataclasses and Hugging Face output
    objects (mappings) alike; None entries (torch's skipped attention weights) are left out."""
    return [to_numpy(a) if isinstance(a, torch.Tensor) else np.asarray(a) for a in array_leaves(value)]


def keyed_like(torch_value: Any, flax_value: Any) -> Any:
    """The torch output with its mappings in the Flax output's key order where both have the same keys
    (leaves are then compared by key), else as it is (compared by position)."""
    if isinstance(torch_value, Mapping) and isinstance(flax_value, Mapping) and set(torch_value) == set(flax_value):
        return {k: keyed_like(torch_value[k], flax_value[k]) for k in flax_value}
    if (
        isinstance(torch_value, tuple | list)
        and isinstance(flax_value, tuple | list)
        and len(torch_value) == len(flax_value)
    ):
        return [keyed_like(t, f) for t, f in zip(torch_value, flax_value, strict=True)]
    return torch_value


def in_flax_layout(
    torch_value: Any, flax_value: Any, channels_last: bool, permutation: np.ndarray | None = None
) -> Any:
    """A torch array (or tensor) laid out as the Flax one: channels moved last, or reshaped (Linear on
    flattened heads); ``permutation`` (a channels-first flatten's, ``match.flatten_permutation``) then puts
    the features of a ``(batch, features)`` value in Flax's order."""
    value = torch_value
    if not channels_last and value.ndim >= 3:  # declared channels-first: moved even when C == H
        moved = value.movedim(1, -1) if isinstance(value, torch.Tensor) else np.moveaxis(value, 1, -1)
        if tuple(moved.shape) == tuple(flax_value.shape):
            value = moved
    if tuple(value.shape) != tuple(flax_value.shape) and _size(value) == _size(flax_value):
        value = value.reshape(tuple(flax_value.shape))
    if permutation is not None and value.ndim == 2 and value.shape[-1] == len(permutation):
        value = value[:, torch.as_tensor(permutation) if isinstance(value, torch.Tensor) else permutation]
    return value


def in_torch_order(flax_value: Any, permutation: np.ndarray) -> Any:
    """Features in Flax's order (last axis) put in the order of torch's flatten of NCHW: the inverse of
    ``in_flax_layout``'s ``permutation`` (Flax feature j is torch feature ``permutation[j]``)."""
    inverse = np.argsort(permutation)
    return flax_value[..., torch.as_tensor(inverse) if isinstance(flax_value, torch.Tensor) else inverse]


def _size(value: Any) -> int:
    return int(np.prod(tuple(value.shape), dtype=np.int64))


def first_array(args: Sequence[Any]) -> np.ndarray | None:
    return next((np.asarray(a) for a in args if isinstance(a, jax.Array | np.ndarray)), None)


def sum_leaves(value: Any) -> Any:
    """The default loss: the sum of every floating leaf of the output, on either side."""
    total: Any = 0.0
    for leaf in array_leaves(value):
        floating = leaf.dtype.is_floating_point if isinstance(leaf, torch.Tensor) else is_float(leaf.dtype)
        if floating:
            total = total + leaf.sum()
    return total


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
