"""Which input rows (the batch axis) gradients are judged on, for chains and trees alike: a row holding NaN or
Inf anywhere in the Flax forward pass has undefined gradients (JAX's relu passes 0 at NaN, torch's NaN), so
it is left out and counted in the report, while its outputs are still compared (NaN against NaN is equal).
A row where a kink's input (relu's) lies within its tolerance of the kink may take the other branch in a
correct port, or meet another convention at the kink itself (``clamp(min=0)`` passes the gradient at 0,
``relu`` does not): its gradients may legitimately differ, and it is left out too."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
import torch

from .._tensors import is_float


def finite_rows(arrays: Iterable[Any], rows: int) -> np.ndarray:
    """Which of ``rows`` input rows hold only finite values in every array: an array whose leading axis has
    that length is read row by row, any other counts for every row."""
    finite = np.ones(rows, bool)
    for values in arrays:
        array = np.asarray(values)
        if not is_float(array.dtype):
            continue
        ok = np.isfinite(array)  # every float dtype, bfloat16 included, without a wide copy
        per_row = array.ndim >= 1 and len(array) == rows
        finite &= ok.reshape(rows, -1).all(axis=1) if per_row else bool(ok.all())
    return finite


def rows_near_kink(values: np.ndarray, at: float, tolerance: np.ndarray, rows: int) -> np.ndarray:
    """Which of ``rows`` input rows hold a value within its ``tolerance`` of the kink ``at`` (``values`` and
    ``tolerance`` float64 of one shape); none when ``values`` has another leading axis (not read row by row)."""
    if values.ndim < 1 or len(values) != rows:
        return np.zeros(rows, bool)
    near = np.asarray(np.abs(values - at) <= tolerance)
    return np.asarray(near.reshape(rows, -1).any(axis=1))


def first_nonfinite(arrays: Iterable[Any]) -> int | None:
    """The index of the first array holding NaN or Inf (None when all are finite)."""
    for index, values in enumerate(arrays):
        array = np.asarray(values)
        if is_float(array.dtype) and not np.all(np.isfinite(array)):
            return index
    return None


def batch_rows(arrays: Iterable[Any]) -> int:
    """How many rows the inputs hold: the leading axis of the first array of rank >= 2 (a single sample of
    rank 1, or no array at all, is one row)."""
    first = next((a for a in arrays if np.ndim(a) >= 1), None)
    return 1 if first is None or np.ndim(first) < 2 else int(np.shape(first)[0])


def take_rows(tree: Any, keep: np.ndarray) -> Any:
    """``tree`` with every array (NumPy, JAX or torch) whose leading axis has ``len(keep)`` entries restricted
    to the kept rows; other leaves as they are."""

    def take(leaf: Any) -> Any:
        if isinstance(leaf, torch.Tensor) and leaf.ndim >= 1 and len(leaf) == len(keep):
            return leaf[torch.as_tensor(keep)]
        if isinstance(leaf, jax.Array | np.ndarray) and leaf.ndim >= 1 and len(leaf) == len(keep):
            return leaf[np.asarray(keep)]
        return leaf

    return jax.tree_util.tree_map(take, tree)
