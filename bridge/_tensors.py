"""Moving arrays between NumPy/JAX and torch, dtype for dtype, with no silent casts."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import torch

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


def torch_dtype(dtype: Any) -> torch.dtype:
    """The torch dtype with the same name as a NumPy/JAX dtype (``float32`` -> ``torch.float32``)."""
    name = np.dtype(dtype).name
    result = getattr(torch, name, None)
    if not isinstance(result, torch.dtype):
        raise TypeError(f"torch has no dtype {name}")
    return result
