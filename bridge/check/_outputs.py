"""A model's outputs and calls' outputs as the comparisons read them: their arrays in order (pytrees,
dataclasses, Hugging Face output objects), the torch ones keyed and laid out as the Flax ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import torch

from .._tensors import is_float
from ..capture import array_leaves as array_leaves
from ..capture import keyed_like as keyed_like
from ..capture import output_leaves as output_leaves


def in_flax_layout(
    torch_value: Any, flax_value: Any, channels_last: bool, permutation: np.ndarray | None = None
) -> Any:
    """A torch array (or tensor) laid out as the Flax one: channels moved last, or reshaped (Linear on
    flattened heads); ``permutation`` (a channels-first flatten's, ``match.flatten_permutation``) then puts
    the features of a ``(batch, features)`` value in Flax's order."""
    value = torch_value
    differs = tuple(value.shape) != tuple(flax_value.shape)
    if (not channels_last or differs) and value.ndim >= 3:  # channels-first: declared, or told by the shapes
        moved = value.movedim(1, -1) if isinstance(value, torch.Tensor) else np.moveaxis(value, 1, -1)
        if tuple(moved.shape) == tuple(flax_value.shape):
            value = moved
    if tuple(value.shape) != tuple(flax_value.shape) and _size(value) == _size(flax_value):
        value = value.reshape(tuple(flax_value.shape))
    elif tuple(value.shape) != tuple(flax_value.shape) and _broadcasts(tuple(value.shape), tuple(flax_value.shape)):
        # one side returns a value shared by the batch ((1, S, D) position embeddings), the other repeats it
        value = (
            value.expand(tuple(flax_value.shape))
            if isinstance(value, torch.Tensor)
            else np.broadcast_to(value, flax_value.shape)
        )
    if permutation is not None and value.ndim == 2 and value.shape[-1] == len(permutation):
        value = value[:, torch.as_tensor(permutation) if isinstance(value, torch.Tensor) else permutation]
    return value


def in_torch_order(flax_value: Any, permutation: np.ndarray) -> Any:
    """Features in Flax's order (last axis) put in the order of torch's flatten of NCHW: the inverse of
    ``in_flax_layout``'s ``permutation`` (Flax feature j is torch feature ``permutation[j]``)."""
    inverse = np.argsort(permutation)
    return flax_value[..., torch.as_tensor(inverse) if isinstance(flax_value, torch.Tensor) else inverse]


def _broadcasts(shape: tuple[int, ...], to: tuple[int, ...]) -> bool:
    """Whether an array of ``shape`` broadcasts to ``to`` with the same number of axes (size-1 axes repeated)."""
    return len(shape) == len(to) and all(s in (1, t) for s, t in zip(shape, to, strict=True))


def _size(value: Any) -> int:
    return int(np.prod(tuple(value.shape), dtype=np.int64))


def first_array(args: Sequence[Any]) -> np.ndarray | None:
    return next((np.asarray(a) for a in args if isinstance(a, jax.Array | np.ndarray)), None)


def sum_leaves(value: Any) -> Any:
    """The sum of every floating leaf of the output, on either side. Not the default loss: its gradient
    vanishes through a final normalisation (a LayerNorm's outputs sum to its bias whatever the input)."""
    total: Any = 0.0
    for leaf in array_leaves(value):
        if _floating(leaf):
            total = total + leaf.sum()
    return total


def projected_sum(value: Any) -> Any:
    """The default loss: every floating leaf of the output weighted elementwise by fixed random numbers
    (drawn from the leaf's position and shape, the same on both sides) and summed. Unlike the plain sum,
    its gradient does not vanish through a final normalisation, so it tests every parameter."""
    total: Any = 0.0
    for number, leaf in enumerate(array_leaves(value)):
        if not _floating(leaf):
            continue
        weights = _projection(number, tuple(int(d) for d in leaf.shape))
        if isinstance(leaf, torch.Tensor):
            total = total + (leaf * torch.from_numpy(weights).to(leaf.dtype)).sum()
        else:
            total = total + (leaf * weights.astype(leaf.dtype)).sum()
    return total


def _projection(number: int, shape: tuple[int, ...]) -> np.ndarray:
    """The fixed weights of output leaf ``number`` of ``shape``: standard normal, seeded by both."""
    seed = np.random.SeedSequence([_PROJECTION_SEED, number, len(shape), *shape])
    return np.random.default_rng(seed).standard_normal(shape)


_PROJECTION_SEED = 20261203


def _floating(leaf: Any) -> bool:
    return bool(leaf.dtype.is_floating_point) if isinstance(leaf, torch.Tensor) else is_float(leaf.dtype)
