"""Checkpoints on disk, read safely and written atomically; the format follows the suffix.

| suffix | holds | read with |
| --- | --- | --- |
| ``.msgpack`` | Flax variables (``flax.serialization.to_bytes``) | ``msgpack_restore``: data only, no code |
| a folder (``.orbax`` or no suffix) | Flax variables, an Orbax checkpoint | ``orbax.checkpoint.StandardCheckpointer`` |
| ``.safetensors`` | a torch state dict (keys ``0.weight``) | ``safetensors``: data only, no code |
| ``.pt`` / ``.pth`` | a torch state dict | ``torch.load(weights_only=True)``: never runs code |
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
import torch
from flax import serialization, traverse_util

from ._atomic import atomic_output
from ._chain import plain_tree
from ._errors import BridgeError, first_line
from ._tensors import is_float, to_numpy

Format = Literal["msgpack", "orbax", "safetensors", "torch"]
FLAX_FORMATS: tuple[Format, ...] = ("msgpack", "orbax")
_SUPPORTED_DTYPES = {"float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}


class CheckpointError(BridgeError):
    """A checkpoint is missing, empty, truncated, of the wrong format, unsafe, or does not fit the model."""


class NonFiniteWarning(UserWarning):
    """A checkpoint holds NaN or Inf values (an error instead with ``strict=True``)."""


def checkpoint_format(path: str | Path) -> Format:
    """The format of a checkpoint path, from its suffix (a folder without one is Orbax).

    Raises:
        CheckpointError: for any other suffix.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix == ".msgpack":
        return "msgpack"
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in (".pt", ".pth"):
        return "torch"
    if suffix in ("", ".orbax") or file.is_dir():
        return "orbax"
    raise CheckpointError(
        f"{file}: unknown checkpoint suffix {suffix!r}; use .msgpack, .safetensors, .pt/.pth, or an Orbax folder"
    )


def load_checkpoint(path: str | Path, target: Any = None, *, strict: bool = False) -> Any:
    """Read a checkpoint: Flax variables (nested dicts of NumPy arrays) or a torch state dict.

    Arguments:
        path: the file or Orbax folder; its suffix gives the format.
        target: for Flax formats, variables of the model (``model.init`` or ``jax.eval_shape`` of
            it): the file must have exactly this tree, shapes and dtypes.
        strict: raise on NaN/Inf values instead of warning.

    Raises:
        CheckpointError: naming the file, for anything wrong with it (one line).
    """
    file = Path(path)
    fmt = checkpoint_format(file)
    result: Any
    if fmt == "orbax":
        result = _read_orbax(file, target)
    elif fmt == "msgpack":
        result = _read_msgpack(file, _read_bytes(file), target)
    else:
        _require_nonempty_file(file)
        result = _read_safetensors(file) if fmt == "safetensors" else _read_torch(file)
    _check_values(file, result, strict)
    return result


def save_checkpoint(obj: Any, path: str | Path, *, force: bool = False) -> None:
    """Write Flax variables (``.msgpack``, Orbax folder) or a torch state dict (``.safetensors``, ``.pt``) atomically.

    Raises:
        CheckpointError: when ``obj`` does not suit the format, or ``path`` exists and ``force`` is false.
    """
    file = Path(path)
    fmt = checkpoint_format(file)
    if fmt in FLAX_FORMATS:
        if not isinstance(obj, Mapping) or _is_state_dict(obj):
            raise CheckpointError(f"{file}: a {fmt} checkpoint holds Flax variables (nested dicts), not a state dict")
        tree = plain_tree(obj, leaf=np.asarray)  # order kept (jax.tree_util would sort the keys)
    else:
        if not _is_state_dict(obj):
            raise CheckpointError(f"{file}: a {fmt} checkpoint holds a torch state dict (str -> Tensor)")
        tree = {key: value.detach().cpu().contiguous() for key, value in obj.items()}
    with atomic_output(file, force=force, directory=fmt == "orbax") as temporary:
        if fmt == "msgpack":
            temporary.write_bytes(serialization.msgpack_serialize(tree, in_place=True))  # tree is our copy
        elif fmt == "orbax":
            import orbax.checkpoint as ocp

            with ocp.StandardCheckpointer() as checkpointer:
                checkpointer.save(temporary.absolute(), tree)
        elif fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(tree, str(temporary))
        else:
            torch.save(tree, temporary)


def flatten_variables(variables: Any) -> dict[str, Any]:
    """Flax variables as ``{"params/Dense_0/kernel": array}`` (for messages and comparisons)."""
    return traverse_util.flatten_dict(plain_tree(serialization.to_state_dict(variables)), sep="/")


def _read_bytes(file: Path) -> bytes:
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{file}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{file}: is a folder, expected a file") from None
    except OSError as e:
        raise CheckpointError(f"{file}: cannot read it ({e.strerror})") from e
    if not data:
        raise CheckpointError(f"{file}: the file is empty")
    return data


def _require_nonempty_file(file: Path) -> None:
    if not file.exists():
        raise CheckpointError(f"{file}: no such file")
    if file.is_dir():
        raise CheckpointError(f"{file}: is a folder, expected a file")
    if file.stat().st_size == 0:
        raise CheckpointError(f"{file}: the file is empty")


def _read_msgpack(file: Path, data: bytes, target: Any) -> Any:
    try:
        state = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several unrelated types on bad or truncated bytes
        raise CheckpointError(f"{file}: not a valid Flax msgpack file, or truncated ({type(e).__name__})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: holds a {type(state).__name__}, not Flax variables")
    return _fit(file, state, target)


def _read_orbax(file: Path, target: Any) -> Any:
    if not file.is_dir():
        raise CheckpointError(f"{file}: no such Orbax checkpoint folder")
    import orbax.checkpoint as ocp

    try:
        with ocp.StandardCheckpointer() as checkpointer:
            state = checkpointer.restore(file.absolute())
    except Exception as e:  # Orbax raises many types for damaged folders
        raise CheckpointError(f"{file}: not a readable Orbax checkpoint ({type(e).__name__}: {first_line(e)})") from e
    return _fit(file, jax.tree_util.tree_map(np.asarray, state), target)


def _fit(file: Path, state: dict[str, Any], target: Any) -> Any:
    """Check a restored tree against the model's own and return it (the first difference named)."""
    if target is None:
        return state
    expected = flatten_variables(target)
    found = traverse_util.flatten_dict(plain_tree(state), sep="/")
    for key in sorted(set(expected) | set(found)):
        if key not in found:
            raise CheckpointError(f"{file}: missing {key} (the model has shape {tuple(np.shape(expected[key]))})")
        if key not in expected:
            raise CheckpointError(f"{file}: has {key} (shape {tuple(np.shape(found[key]))}), which the model does not")
        want, have = expected[key], np.asarray(found[key])
        if tuple(np.shape(want)) != have.shape:
            raise CheckpointError(f"{file}: {key} has shape {have.shape}, the model expects {tuple(np.shape(want))}")
        if np.dtype(want.dtype) != have.dtype:
            raise CheckpointError(f"{file}: {key} is {have.dtype}, the model expects {np.dtype(want.dtype)}")
    return traverse_util.unflatten_dict({tuple(k.split("/")): np.asarray(v) for k, v in found.items()})


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except SafetensorError as e:
        raise CheckpointError(f"{file}: not a valid safetensors file, or truncated ({e})") from e
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: unsupported safetensors content ({e})") from e


def _read_torch(file: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{file}: refused: loading it would run code or build objects other than tensors ({first_line(e)[:160]}); "
            "save a plain state dict (model.state_dict()) or use .safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable torch file, or truncated ({first_line(e)[:160]})") from None
    if not _is_state_dict(state):
        raise CheckpointError(f"{file}: holds a {type(state).__name__}, not a state dict (str -> Tensor)")
    return dict(state)


def _check_values(file: Path, checkpoint: Any, strict: bool) -> None:
    """``check_tensor`` on every tensor of a checkpoint; one warning at most (the first tensor named)."""
    items = checkpoint.items() if _is_state_dict(checkpoint) else flatten_variables(checkpoint).items()
    warned = False
    for key, value in sorted(items, key=lambda item: item[0]):
        array = to_numpy(value) if isinstance(value, torch.Tensor) else np.asarray(value)
        warned = check_tensor(file, key, array, strict=strict, warn=not warned) or warned


def check_tensor(file: Path, key: str, array: np.ndarray, *, strict: bool, warn: bool = True) -> bool:
    """Refuse an unsupported dtype; on NaN/Inf raise (``strict``) or warn. Returns whether it holds NaN/Inf.

    Raises:
        CheckpointError: naming the file and the tensor.
    """
    if array.dtype.name not in _SUPPORTED_DTYPES:
        raise CheckpointError(f"{file}: {key} has dtype {array.dtype.name}, which the bridge does not convert")
    if not is_float(array.dtype) or np.isfinite(array).all():
        return False
    message = f"{file}: {key} holds NaN or Inf"
    if strict:
        raise CheckpointError(message + " (strict)")
    if warn:
        warnings.warn(message, NonFiniteWarning, stacklevel=3)
    return True


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def read_flax_variables(path: str | Path, target: Any) -> Any:
    """Flax variables from a ``.msgpack`` file or Orbax folder, checked against ``target`` (``--params``)."""
    if checkpoint_format(path) not in FLAX_FORMATS:
        raise CheckpointError(f"{path}: expected Flax variables (.msgpack or an Orbax folder)")
    return jax.tree_util.tree_map(np.asarray, load_checkpoint(path, target))
