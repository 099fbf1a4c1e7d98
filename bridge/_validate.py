"""The public functions' arguments, refused early with an ``InvalidArgumentError`` that names the argument
and the fix, where a wrong one would otherwise fail deep inside with a raw ``AttributeError``."""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import torch
from flax import nnx

from ._errors import InvalidArgumentError

# what a variable leaf may be: an array, a number, or a shape (``jax.eval_shape`` of ``model.init``)
_LEAVES = (np.ndarray, np.generic, jax.Array, jax.ShapeDtypeStruct, int, float, bool)


def require_seed(seed: Any, name: str = "seed") -> int:
    """A seed ``jax.random.PRNGKey`` and NumPy both take as it is (``PRNGKey`` would silently wrap a larger one):
    an integer, or an integral number, in [0, 2**32), not a bool; returned as an int. ``name`` is how the
    message names it (``seed``, ``--seed``, ``every seed``)."""
    integral = isinstance(seed, numbers.Integral) or (isinstance(seed, numbers.Real) and float(seed).is_integer())
    if isinstance(seed, bool) or not integral or not 0 <= int(seed) < 2**32:
        raise InvalidArgumentError(f"{name} must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


def require_port(port: Any, argument: str = "port") -> None:
    """``port`` must be the torch module itself (not a Flax model, a function, a class or a name)."""
    if isinstance(port, torch.nn.Module):
        return
    if isinstance(port, nn.Module | nnx.Module):
        why = "a Flax module: the port is the torch side; pass the Flax model as model and the torch module here"
    elif isinstance(port, type):
        why = f"the class {port.__name__}: pass an instance, {port.__name__}(...)"
    elif callable(port):
        why = f"a {type(port).__name__}, not a module: wrap it in a torch.nn.Module whose forward calls it"
    else:
        why = f"{type(port).__name__}: pass your torch.nn.Module (the port)"
    raise InvalidArgumentError(f"{argument} must be a torch.nn.Module, got {why}")


def require_variables(variables: Any, argument: str = "variables") -> None:
    """``variables`` must be what ``model.init`` returns: a mapping whose leaves are arrays (no None)."""
    if variables is None:
        return
    if not isinstance(variables, Mapping):
        raise InvalidArgumentError(
            f"{argument} must be the mapping model.init returns ({{'params': ...}}), got {type(variables).__name__}"
        )
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables, is_leaf=lambda x: x is None)[0]:
        if not isinstance(leaf, _LEAVES):
            where = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            raise InvalidArgumentError(
                f"{argument} holds {type(leaf).__name__} at {where!r}, where an array belongs: pass what model.init "
                "returned (or a checkpoint read with bridge.load_checkpoint)"
            )


def require_mapping(mapping: Any, argument: str = "mapping") -> None:
    """``mapping`` must be ``{flax_glob: torch_glob}`` with str keys and values."""
    if mapping is None:
        return
    if not isinstance(mapping, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
    ):
        raise InvalidArgumentError(
            f"{argument} must be a dict of Flax paths to torch names ({{'Block_0/Dense_1': 'blocks.0.fc2'}}), "
            f"got {type(mapping).__name__}"
        )


def require_path(path: Any, argument: str = "path") -> None:
    """``path`` must name a file: a ``str`` or an ``os.PathLike``."""
    if not isinstance(path, str | os.PathLike) or not os.fspath(path):
        raise InvalidArgumentError(f"{argument} must be a file path (str or pathlib.Path), got {path!r:.60}")
