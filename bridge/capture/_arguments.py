"""Both sides' arguments for a run of a model and its port: ``inputs`` as ``apply`` takes them, the port's as
tensors (or as the user gave them), and whether the port takes them channels-last."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import torch

from .._arguments import call_arguments, port_keywords, torch_arguments
from .._errors import InvalidArgumentError
from .._tensors import is_float
from ._leaves import output_leaves


def pair_arguments(
    model: Any, port: torch.nn.Module, inputs: Any, torch_inputs: Any, channels_last: bool
) -> tuple[tuple[Any, ...], dict[str, Any], tuple[Any, ...], dict[str, Any], bool]:
    """``(args, kwargs, torch_args, torch_kwargs, channels_last)`` for a model that is not one chain: ``inputs`` as
    given; the port's as ``torch_inputs`` gives them (channels-first where they hold the Flax images so), else the
    same values as tensors, named as the port names them (``port_keywords``)."""
    if inputs is None:
        raise InvalidArgumentError(
            f"{type(model).__name__} is not one nn.Sequential chain: pass inputs= (an array, a tuple of positional "
            "arguments or a dict of keyword arguments for its apply) so that both models can be run and their calls "
            "paired"
        )
    args, kwargs = call_arguments(inputs)
    for value in (*args, *kwargs.values()):
        if isinstance(value, jax.Array | np.ndarray) and value.size == 0:
            raise InvalidArgumentError(f"an input of shape {tuple(value.shape)} holds no values: give at least one row")
    if torch_inputs is None:
        torch_args, torch_kwargs = torch_arguments(args, kwargs, channels_last)
        return args, kwargs, torch_args, port_keywords(port, torch_kwargs), channels_last
    torch_args, torch_kwargs = torch_arguments(*call_arguments(torch_inputs), True)
    channels_last = channels_last and not _given_channels_first((args, kwargs), (torch_args, torch_kwargs))
    return args, kwargs, torch_args, torch_kwargs, channels_last


def _given_channels_first(flax_inputs: Any, torch_inputs: Any) -> bool:
    """Whether the port's own inputs hold the Flax model's first image (a floating array of rank >= 3) with
    its channels moved first (a Hugging Face vision port fed NCHW pixels): the port is then channels-first."""
    flax_first = next((a for a in output_leaves(flax_inputs) if is_float(a.dtype) and a.ndim >= 3), None)
    torch_first = next((a for a in output_leaves(torch_inputs) if is_float(a.dtype) and a.ndim >= 3), None)
    if flax_first is None or torch_first is None or torch_first.shape == flax_first.shape:
        return False
    return bool(np.array_equal(np.moveaxis(torch_first, 1, -1), flax_first))
