"""The torch twin of the seed problem: ``flax_impl.run`` computed by the converted PyTorch model."""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import torch

import flax_impl
import torch_impl

from .._errors import InvalidArgumentError
from .._tensors import to_tensor, torch_dtype
from ._load import load_into


class SeedModels(NamedTuple):
    """The seed problem on both sides: the Flax model, its variables, the loaded torch twin, and x."""

    model: nn.Module
    variables: Any
    torch_module: torch.nn.Sequential
    x: Any


def seed_models(seed: Any, x: Any, hidden: Any, out: Any) -> SeedModels:
    """Validate the seed problem's arguments, init the Flax model, and load its weights into ``torch_impl.SeqMLP``.

    Raises:
        InvalidArgumentError: when an argument is out of its domain (the message names it).
    """
    try:
        args = flax_impl.validate_run_arguments(seed, x, hidden, out)
    except flax_impl.InvalidArgumentError as e:
        raise InvalidArgumentError(str(e)) from e
    model, variables = flax_impl.init_variables(args)
    dtype = jax.tree_util.tree_leaves(variables)[0].dtype  # the twin holds the weights in Flax's dtype
    twin = torch_impl.SeqMLP(args.x.shape[-1], args.hidden, args.out, dtype=torch_dtype(dtype))
    load_into(model, variables, twin)
    return SeedModels(model, variables, twin.eval(), jnp.asarray(args.x))


def run_torch(seed: Any, x: Any, hidden: Any, out: Any) -> torch.Tensor:
    """The torch twin of ``flax_impl.run``: same arguments, same validation, a tensor of shape ``(..., out)``.

    The weights are Flax's (``PRNGKey(int(seed))``), converted: torch's own init never matches Flax's.
    x is taken as JAX takes it (``jnp.asarray``) and promoted to the weights' dtype, as ``nn.Dense`` does.

    Raises:
        InvalidArgumentError: when an argument is out of its domain (the message names it).
    """
    models = seed_models(seed, x, hidden, out)
    weight_dtype = next(models.torch_module.parameters()).dtype
    with torch.no_grad():
        return models.torch_module(to_tensor(models.x).to(weight_dtype))
