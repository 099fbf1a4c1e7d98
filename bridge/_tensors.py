"""Moving arrays between NumPy/JAX and torch, dtype for dtype, with no silent casts."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np
import torch

from ._errors import InvalidArgumentError

# torch.from_numpy does not know ml_dtypes' bfloat16: it travels as its bits.
_BF16 = np.dtype(ml_dtypes.bfloat16)


def to_tensor(array: Any) -> torch.Tensor:
    """Copy a NumPy or JAX array (any dtype torch has, bfloat16 included) into a new contiguous torch tensor."""
    host = np.array(array, copy=True, order="C")
    if host.dtype == _BF16:
        return torch.from_numpy(host.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(host)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Copy a torch tensor into a new NumPy array of the same dtype (bfloat16 as ml_dtypes.bfloat16)."""
    detached = tensor.detach().cpu()
    if detached.dtype == torch.bfloat16:
        return detached.view(torch.uint16).numpy().view(_BF16).copy()
    return detached.numpy().copy()


def is_array(value: Any) -> bool:
    """Whether ``value`` is a NumPy or JAX array (a JAX tracer included): an input that is data, not a setting."""
    return isinstance(value, np.ndarray | jax.Array)


def is_float(dtype: Any) -> bool:
    """Whether a NumPy/JAX dtype is floating point (bfloat16 included, which NumPy files under kind 'V')."""
    return bool(jax.numpy.issubdtype(dtype, jax.numpy.floating))


def torch_dtype(dtype: Any) -> torch.dtype:
    """The torch dtype with the same name as a NumPy/JAX dtype (``float32`` -> ``torch.float32``)."""
    return _torch_dtype_named(np.dtype(dtype).name)


@functools.cache
def _torch_dtype_named(name: str) -> torch.dtype:
    result = getattr(torch, name, None)
    if not isinstance(result, torch.dtype):
        raise TypeError(f"torch has no dtype {name}")
    return result


def numpy_dtype(dtype: torch.dtype) -> np.dtype[Any]:
    """The NumPy/JAX dtype with the same name as a torch dtype (``torch.bfloat16`` -> ml_dtypes' bfloat16)."""
    return _BF16 if dtype == torch.bfloat16 else np.dtype(str(dtype).removeprefix("torch."))


def shared_tensor(array: Any, what: str) -> torch.Tensor:
    """A torch tensor sharing the memory of a JAX array (DLPack) or a writable NumPy array: no copy.

    Raises:
        InvalidArgumentError: for a read-only NumPy array (torch cannot share it safely) or another type.
    """
    if isinstance(array, jax.Array):
        return torch.utils.dlpack.from_dlpack(array)
    if isinstance(array, np.ndarray):
        if not array.flags.writeable:
            raise InvalidArgumentError(f"{what}: a read-only NumPy array cannot be shared with torch; use copy=True")
        if array.dtype == _BF16:
            return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
        return torch.from_numpy(array)
    raise InvalidArgumentError(f"{what}: cannot share a {type(array).__name__} with torch; use copy=True")


def plain_tree(tree: Any, leaf: Any = None) -> Any:
    """Nested mappings (FrozenDict included) as plain dicts with string keys, in their own order
    (``jax.tree_util`` would sort them); ``leaf`` converts the leaves."""
    if isinstance(tree, Mapping):
        return {str(key): plain_tree(value, leaf) for key, value in tree.items()}
    return tree if leaf is None else leaf(tree)


def channels_first_flatten_permutation(channels: int, positions: int) -> np.ndarray:
    """For each feature of Flax's flatten of ``(positions, channels)`` (channels last), its index in
    torch's ``nn.Flatten`` of ``(channels, positions)``: ``permutation[p * C + c] = c * P + p``."""
    return np.arange(channels * positions).reshape(channels, positions).T.reshape(-1)
