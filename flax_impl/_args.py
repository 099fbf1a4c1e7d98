"""Validation of the seed problem's loosely typed arguments (seed, hidden and out arrive as floats)."""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import numpy as np

# jax.random.PRNGKey silently truncates seeds outside the uint32 range (2**32 gives the key of 0),
# so any seed outside it would alias another one.
SEED_RANGE = (0, 2**32)


class InvalidArgumentError(ValueError):
    """An argument of the seed problem is out of its domain; the message names the argument."""


class RunArguments(NamedTuple):
    """The seed problem's arguments after validation: integers, and an input of rank >= 1."""

    seed: int
    x: np.ndarray
    hidden: int
    out: int


def as_integral(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    """Return `value` as an int when it is an integral number in range, else raise.

    Arguments:
        name: the argument's name, used in the error message.
        value: an int, an integral float (``3.0``), or a NumPy scalar of either.
        minimum, maximum: the accepted range, ``minimum <= value < maximum``.

    Raises:
        InvalidArgumentError: for booleans, non-numbers, NaN, infinities, fractions, or out-of-range values.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"{name} must be an integral number, got {value!r}")
    as_float = float(value)
    if not math.isfinite(as_float):
        raise InvalidArgumentError(f"{name} must be finite, got {value!r}")
    if isinstance(value, numbers.Integral):
        integer = int(value)
    elif as_float.is_integer():
        integer = int(as_float)
    else:
        raise InvalidArgumentError(f"{name} must be integral, got {value!r}; round it first")
    if integer < minimum or (maximum is not None and integer >= maximum):
        upper = "" if maximum is None else f" and < {maximum}"
        raise InvalidArgumentError(f"{name} must be >= {minimum}{upper}, got {integer}")
    return integer


def validate_run_arguments(seed: Any, x: Any, hidden: Any, out: Any) -> RunArguments:
    """Check and normalise the arguments of ``run`` (and of its torch twin); raise on any bad one."""
    seed_int = as_integral("seed", seed, minimum=SEED_RANGE[0], maximum=SEED_RANGE[1])
    hidden_int = as_integral("hidden", hidden, minimum=1)
    out_int = as_integral("out", out, minimum=1)
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"x must be an array of numbers, got {type(x).__name__}") from e
    if array.ndim == 0:
        raise InvalidArgumentError("x must have rank >= 1 (features on the last axis), got a scalar")
    if array.shape[-1] == 0:
        raise InvalidArgumentError(f"x must have at least one feature on its last axis, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InvalidArgumentError(f"x must hold real numbers, got dtype {array.dtype}")
    return RunArguments(seed_int, array, hidden_int, out_int)
