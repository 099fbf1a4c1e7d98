"""The seed's model: a 3-layer MLP written as ``nn.Sequential`` inside an ``@nn.compact`` module."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ._args import RunArguments, validate_run_arguments


class SeqMLP(nn.Module):
    """``Dense(hidden) -> relu -> Dense(hidden) -> relu -> Dense(out)`` over the last axis of x."""

    hidden: int
    out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Sequential(
            [
                nn.Dense(features=self.hidden),
                jax.nn.relu,
                nn.Dense(features=self.hidden),
                jax.nn.relu,
                nn.Dense(features=self.out),
            ]
        )(x)


def init_variables(args: RunArguments) -> tuple[SeqMLP, Any]:
    """``(model, variables)`` of the seed problem for validated arguments (see ``validate_run_arguments``)."""
    model = SeqMLP(hidden=args.hidden, out=args.out)
    variables = model.init(jax.random.PRNGKey(args.seed), jnp.asarray(args.x))
    return model, variables


def run(seed: Any, x: Any, hidden: Any, out: Any) -> jax.Array:
    """The seed problem: init ``SeqMLP`` with ``PRNGKey(int(seed))`` and apply it to x.

    Arguments:
        seed: an integral number (``0`` or ``0.0``) in ``[0, 2**32)``.
        x: array of shape ``(..., in_features)``; a 1-D x gives a 1-D result. NaN propagates.
        hidden, out: integral widths >= 1.

    Returns:
        An array of shape ``(..., out)``.

    Raises:
        InvalidArgumentError: when an argument is out of its domain (the message names it).
    """
    args = validate_run_arguments(seed, x, hidden, out)
    model, variables = init_variables(args)
    output = model.apply(variables, jnp.asarray(args.x))
    assert isinstance(output, jax.Array)
    return output
