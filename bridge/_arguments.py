"""A model's inputs as call arguments: ``inputs`` (an array, a tuple of positional arguments or a dict of
keywords) as ``apply``'s arguments, and those as the torch port's tensors (channels-first where asked)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from ._tensors import is_float, to_tensor

# where a converted module records the parameter name of each Flax input name (in its ``meta``)
INPUT_NAMES = "flax_input_names"


def port_keywords(port: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments as the port names them: a converted module takes an input that is no Python name
    (``my-input``) as another (``my_input``), and records which in its ``meta``."""
    meta = getattr(port, "meta", None)
    names = meta.get(INPUT_NAMES, {}) if isinstance(meta, dict) else {}
    return {names.get(k, k): v for k, v in kwargs.items()}


def call_arguments(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``inputs`` as ``apply``'s arguments: an array (or a nested list) is one positional argument, a tuple
    several, a dict keywords."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, tuple):
        return inputs, {}
    return (np.asarray(inputs) if isinstance(inputs, list) else inputs,), {}


def torch_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], channels_last: bool
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The Flax arguments as torch tensors (float arrays of rank >= 3 moved to channels-first when asked)."""
    return tuple(torch_argument(a, channels_last) for a in args), {
        k: torch_argument(v, channels_last) for k, v in kwargs.items()
    }


def torch_argument(value: Any, channels_last: bool) -> Any:
    """One Flax argument as the port's (arrays as tensors, nested containers alike; see ``torch_arguments``)."""
    if isinstance(value, jax.Array | np.ndarray):
        array = np.asarray(value)
        if not channels_last and is_float(array.dtype) and array.ndim >= 3:
            array = np.moveaxis(array, -1, 1)
        return to_tensor(array)
    if isinstance(value, tuple | list):
        return type(value)(torch_argument(v, channels_last) for v in value)
    if isinstance(value, Mapping):
        return {k: torch_argument(v, channels_last) for k, v in value.items()}
    return value
