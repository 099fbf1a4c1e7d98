"""Reading checkpoints safely: never unpickling, always restoring against the model's own structure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization, traverse_util

from ._errors import BridgeError


class CheckpointError(BridgeError):
    """A checkpoint file is missing, unreadable, of the wrong format, or does not fit the model."""


def read_flax_variables(path: str | Path, target: Any) -> Any:
    """Flax variables from a ``.msgpack`` file (``flax.serialization.to_bytes``), checked against ``target``.

    Arguments:
        path: the file.
        target: variables of the same model (``model.init(...)``): the tree and shapes the file must have.

    Raises:
        CheckpointError: naming the file, and the first differing path with both shapes where the tree differs.
    """
    file = Path(path)
    if file.suffix != ".msgpack":
        raise CheckpointError(f"{file}: expected a .msgpack file of Flax variables (flax.serialization.to_bytes)")
    try:
        data = file.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{file}: cannot read it ({e.strerror})") from e
    if not data:
        raise CheckpointError(f"{file}: the file is empty")
    try:
        state = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several unrelated types on bad bytes
        raise CheckpointError(f"{file}: not a valid msgpack file ({type(e).__name__})") from e
    expected = traverse_util.flatten_dict(serialization.to_state_dict(target), sep="/")
    found = traverse_util.flatten_dict(state, sep="/") if isinstance(state, dict) else {}
    for key in sorted(set(expected) | set(found)):
        if key not in found:
            raise CheckpointError(f"{file}: missing {key} (the model expects shape {np.shape(expected[key])})")
        if key not in expected:
            raise CheckpointError(f"{file}: unexpected {key} (shape {np.shape(found[key])}) not in the model")
        if np.shape(found[key]) != np.shape(expected[key]):
            raise CheckpointError(
                f"{file}: {key} has shape {np.shape(found[key])}, the model expects {np.shape(expected[key])}"
            )
        if np.asarray(found[key]).dtype != np.asarray(expected[key]).dtype:
            raise CheckpointError(
                f"{file}: {key} is {np.asarray(found[key]).dtype}, the model expects {np.asarray(expected[key]).dtype}"
            )
    return jax.tree_util.tree_map(np.asarray, serialization.from_state_dict(target, state))
