"""Checkpoints on disk, read safely and written atomically; the format follows the suffix.

| suffix | holds | read with |
| --- | --- | --- |
| ``.msgpack`` | Flax variables (``flax.serialization.to_bytes``) | ``msgpack_restore``: data only, no code |
| a folder (``.orbax`` or no suffix) | Flax variables, an Orbax checkpoint | ``orbax.checkpoint.StandardCheckpointer`` |
| ``.safetensors`` | a torch state dict (keys ``0.weight``) | ``safetensors``: data only, no code |
| ``.pt`` / ``.pth`` | a torch state dict | ``torch.load(weights_only=True)``: never runs code |
"""

from __future__ import annotations

import logging
import os
import pickle
import stat
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
import torch
from flax import serialization, traverse_util

from .._errors import CheckpointError, NonFiniteWarning, OutputRefusedError, first_line
from .._tensors import is_float, plain_tree, to_numpy
from .._validate import require_path
from ._atomic import atomic_output
from ._preflight import file_fits

Format = Literal["msgpack", "orbax", "safetensors", "torch"]
FLAX_FORMATS: tuple[Format, ...] = ("msgpack", "orbax")
SUPPORTED_DTYPES = {"float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
_MAX_MESSAGE = 200  # characters of a library's own error message quoted in ours
_MAX_FOLDER_ENTRIES = 100_000
MAX_DEPTH = 100  # dict nesting of Flax variables (a model nested deeper than this is not plausible)


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
    require_path(path)
    file = Path(path)
    return read_checkpoint(file, checkpoint_format(file), target, strict=strict)


def read_checkpoint(
    file: Path, fmt: Format, target: Any = None, *, strict: bool = False, label: Path | None = None
) -> Any:
    """``load_checkpoint`` of ``file`` in the format ``fmt`` (a staged temporary has no suffix); messages
    name ``label`` (default ``file``). Only regular files are read, after their size is checked
    against the memory available.

    Raises:
        CheckpointError: naming ``label``, for anything wrong with the file (one line).
    """
    shown = label or file
    result: Any
    if fmt == "orbax":
        result = _read_orbax(file, shown, target)
    elif fmt == "msgpack":
        result = _read_msgpack(shown, _read_bytes(file, shown), target)
    else:
        size = regular_file_size(file, shown)
        file_fits(shown, size, 1.5)
        result = _read_safetensors(file, shown) if fmt == "safetensors" else _read_torch(file, shown)
    _check_values(shown, result, strict)
    return result


def save_checkpoint(obj: Any, path: str | Path, *, force: bool = False) -> None:
    """Write Flax variables (``.msgpack``, Orbax folder) or a torch state dict (``.safetensors``, ``.pt``) atomically
    (``atomic_output``: a failure or a kill never leaves a damaged or half-replaced ``path``).

    Raises:
        CheckpointError: when ``obj`` does not suit the format.
        OutputExistsError: ``path`` exists and ``force`` is false.
        OutputRefusedError: ``force`` and ``path`` is not a checkpoint of its format (or is the current folder).
    """
    file = Path(path)
    fmt = checkpoint_format(file)
    tree = _prepared(obj, file, fmt)
    with atomic_output(file, force=force, directory=fmt == "orbax", may_replace=replaceable(fmt)) as temporary:
        _write(tree, fmt, temporary)


def write_checkpoint(obj: Any, fmt: Format, temporary: Path, label: Path) -> None:
    """Write ``obj`` in the format ``fmt`` at ``temporary`` (a path from ``atomic_output``; messages name ``label``).

    Raises:
        CheckpointError: when ``obj`` does not suit the format.
    """
    _write(_prepared(obj, label, fmt), fmt, temporary)


def _prepared(obj: Any, file: Path, fmt: Format) -> Any:
    if fmt in FLAX_FORMATS:
        if not isinstance(obj, Mapping) or _is_state_dict(obj):
            raise CheckpointError(f"{file}: a {fmt} checkpoint holds Flax variables (nested dicts), not a state dict")
        return plain_tree(obj, leaf=np.asarray)  # order kept (jax.tree_util would sort the keys)
    if not _is_state_dict(obj):
        raise CheckpointError(f"{file}: a {fmt} checkpoint holds a torch state dict (str -> Tensor)")
    return {key: value.detach().cpu().contiguous() for key, value in obj.items()}


def _write(tree: Any, fmt: Format, temporary: Path) -> None:
    """Write a prepared tree; whatever the libraries write beside ``temporary`` is in its staging folder."""
    if fmt == "msgpack":
        temporary.write_bytes(serialization.msgpack_serialize(tree, in_place=True))  # tree is our copy
    elif fmt == "orbax":
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(temporary.absolute(), tree)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(tree, str(temporary), metadata={"format": "pt"})  # what Hugging Face's loaders expect
    else:
        torch.save(tree, temporary)


def replaceable(fmt: Format) -> Callable[[Path], None]:
    """The ``may_replace`` of ``atomic_output`` for a destination of format ``fmt``: ``force`` replaces an
    Orbax folder (recognised by its metadata files) or a file whose first bytes are of the format (or
    empty), never anything else."""

    def check(path: Path) -> None:
        if fmt == "orbax":
            if path.is_dir() and any((path / name).is_file() for name in ("_CHECKPOINT_METADATA", "_METADATA")):
                return
            raise OutputRefusedError(
                f"{path}: is not an Orbax checkpoint folder (no _CHECKPOINT_METADATA or _METADATA in it), so --force "
                "will not replace it; remove it yourself or name another destination"
            )
        if not path.is_file():
            raise OutputRefusedError(f"{path}: is not a regular file; --force replaces only a {fmt} checkpoint")
        try:
            with path.open("rb") as handle:
                head = handle.read(16)
            size = path.stat().st_size
        except OSError as e:
            raise OutputRefusedError(f"{path}: cannot read it to see what it is ({e.strerror})") from None
        if head and not _looks_like(fmt, head, size):
            raise OutputRefusedError(
                f"{path}: is not a {fmt} checkpoint (its first bytes say otherwise), so --force will not replace "
                "it; remove it yourself or name another destination"
            )

    return check


def _looks_like(fmt: Format, head: bytes, size: int) -> bool:
    if fmt == "msgpack":
        return 0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)  # a map: Flax variables
    if fmt == "safetensors":
        return len(head) > 8 and int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{"
    return head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")  # torch.save: a zip, or a legacy pickle


def flatten_variables(variables: Any) -> dict[str, Any]:
    """Flax variables as ``{"params/Dense_0/kernel": array}`` (for messages and comparisons)."""
    return traverse_util.flatten_dict(plain_tree(serialization.to_state_dict(variables)), sep="/")


def _open_regular(file: Path, label: Path) -> tuple[int, int]:
    """Open ``file`` for reading without blocking (a FIFO would) and return the descriptor and its size.

    Raises:
        CheckpointError: when it is missing, unreadable, or not a regular file (FIFO, device, folder).
    """
    try:
        descriptor = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        link = " (a link to a missing file)" if file.is_symlink() else ""
        raise CheckpointError(f"{label}: no such file{link}") from None
    except PermissionError:
        raise CheckpointError(f"{label}: cannot read it: permission denied; check its permissions (ls -l)") from None
    except OSError as e:
        raise CheckpointError(f"{label}: cannot open it ({e.strerror})") from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        if stat.S_ISDIR(info.st_mode):
            raise CheckpointError(f"{label}: is a folder, expected a file")
        raise CheckpointError(f"{label}: is {_kind(info.st_mode)}, not a regular file; only checkpoint files are read")
    return descriptor, info.st_size


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def regular_file_size(file: Path, label: Path | None = None) -> int:
    """The size of a non-empty regular file (symbolic links followed).

    Raises:
        CheckpointError: when it is missing, unreadable, empty, or not a regular file.
    """
    descriptor, size = _open_regular(file, label or file)
    os.close(descriptor)
    if size == 0:
        raise CheckpointError(f"{label or file}: the file is empty")
    return size


def _read_bytes(file: Path, label: Path) -> bytes:
    descriptor, size = _open_regular(file, label)
    if size == 0:
        os.close(descriptor)
        raise CheckpointError(f"{label}: the file is empty")
    try:
        file_fits(label, size, 2.0)  # the bytes (the arrays view them), the converted copy
        with os.fdopen(descriptor, "rb") as handle:
            return handle.read(size)
    except OSError as e:
        raise CheckpointError(f"{label}: cannot read it ({e.strerror})") from None


def _read_msgpack(file: Path, data: bytes, target: Any) -> Any:
    try:
        state = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several unrelated types on bad or truncated bytes
        raise CheckpointError(f"{file}: not a valid Flax msgpack file, or truncated ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: holds a {type(state).__name__}, not Flax variables")
    depth = _depth(state)
    if depth > MAX_DEPTH:
        raise CheckpointError(f"{file}: nested {depth} levels deep; Flax variables are nested at most {MAX_DEPTH}")
    return _fit(file, state, target)


def _depth(tree: Any) -> int:
    """How deeply dicts nest in ``tree`` (iterative: a hostile file must not exhaust the stack)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:
            stack.extend((child, level + 1) for child in node.values() if isinstance(child, dict))
    return deepest


def _read_orbax(file: Path, label: Path, target: Any) -> Any:
    size = _check_folder(file, label)
    file_fits(label, size, 2.0)
    import orbax.checkpoint as ocp

    _quiet_closed_event_loops()
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            state = checkpointer.restore(file.absolute())
    except Exception as e:  # Orbax raises many types for damaged folders
        reason = first_line(e)[:_MAX_MESSAGE]
        raise CheckpointError(f"{label}: not a readable Orbax checkpoint ({type(e).__name__}: {reason})") from None
    return _fit(label, jax.tree_util.tree_map(np.asarray, state), target)


def _check_folder(file: Path, label: Path) -> int:
    """An Orbax folder holds folders and regular files only (a FIFO would hang the reader); their total size."""
    if not file.is_dir():
        kind = "a file, expected an Orbax folder" if file.exists() else "no such Orbax checkpoint folder"
        raise CheckpointError(f"{label}: {kind}" if kind.startswith("no") else f"{label}: is {kind}")
    total, count = 0, 0
    for root, folders, names in os.walk(file):
        for name in names + [f for f in folders if os.path.islink(os.path.join(root, f))]:
            count += 1
            if count > _MAX_FOLDER_ENTRIES:
                raise CheckpointError(f"{label}: holds more than {_MAX_FOLDER_ENTRIES} files; not an Orbax checkpoint")
            path = Path(root, name)
            try:
                info = path.stat()
            except OSError as e:
                raise CheckpointError(f"{label}: cannot read {path.relative_to(file)} ({e.strerror})") from None
            if stat.S_ISDIR(info.st_mode) and path.is_symlink():
                raise CheckpointError(
                    f"{label}: {path.relative_to(file)} is a link to a folder; copy the checkpoint instead"
                )
            if not stat.S_ISREG(info.st_mode):
                raise CheckpointError(
                    f"{label}: {path.relative_to(file)} is {_kind(info.st_mode)}, not a regular file; "
                    "only checkpoint files are read"
                )
            if not os.access(path, os.R_OK):
                raise CheckpointError(f"{label}: cannot read {path.relative_to(file)}: permission denied")
            total += info.st_size
    return total


def _quiet_closed_event_loops() -> None:
    """A failed Orbax restore leaves tensorstore callbacks and asyncio tasks behind: the callbacks reach a
    closed event loop ("RuntimeError: Event loop is closed", through ``sys.unraisablehook``) and the tasks,
    when collected, log "Task (or Future) exception was never retrieved" with the whole tensorstore spec. The error
    itself is reported once, as a ``CheckpointError``: drop those two (only those), once per process."""
    previous = sys.unraisablehook
    if getattr(previous, "_bridge_quiet", False):
        return

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        previous(unraisable)

    hook._bridge_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_drop_lost_tensorstore_tasks)


def _drop_lost_tensorstore_tasks(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not ("exception was never retrieved" in message and "tensorstore_spec" in message)


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


def _read_safetensors(file: Path, label: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as reader:
            check_safetensors_dtypes(label, reader)
            state = {key: reader.get_tensor(key) for key in reader.keys()}  # noqa: SIM118 (not a dict)
    except SafetensorError as e:
        raise CheckpointError(
            f"{label}: not a valid safetensors file, or truncated ({str(e)[:_MAX_MESSAGE]})"
        ) from None
    except (TypeError, ValueError, RuntimeError, OSError) as e:
        raise CheckpointError(f"{label}: unsupported safetensors content ({first_line(e)[:_MAX_MESSAGE]})") from None
    _check_torch_tensors(label, state)
    return state


SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I8": "int8"}
SAFETENSORS_DTYPES |= {"I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "BOOL": "bool"}


def check_safetensors_dtypes(label: Path, reader: Any) -> None:
    """Refuse float8 and other dtypes from the header, before any tensor is read."""
    for key in sorted(reader.keys()):
        dtype = reader.get_slice(key).get_dtype()
        if dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{label}: {key} has dtype {dtype}, which the bridge does not convert")


def _read_torch(file: Path, label: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{label}: refused: loading it would run code or build objects other than tensors ({first_line(e)[:160]}); "
            "save a plain state dict (model.state_dict()) or use .safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{label}: not a readable torch file, or truncated ({first_line(e)[:160]})") from None
    except RecursionError:
        raise CheckpointError(f"{label}: not a readable torch file (nested too deeply)") from None
    if not _is_state_dict(state):
        raise CheckpointError(f"{label}: holds a {type(state).__name__}, not a state dict (str -> Tensor)")
    state = dict(state)
    _check_torch_tensors(label, state)
    return state


def _check_torch_tensors(label: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Only dense tensors with data, of a dtype the bridge converts (no sparse, meta, quantised or float8)."""
    for key in sorted(state):
        tensor = state[key]
        if tensor.layout != torch.strided:
            raise CheckpointError(f"{label}: {key} is a {tensor.layout} tensor; save dense tensors (tensor.to_dense())")
        if tensor.is_meta:
            raise CheckpointError(f"{label}: {key} is a meta tensor (no data); save the model after it is materialised")
        if tensor.is_quantized:
            raise CheckpointError(f"{label}: {key} is quantised ({tensor.dtype}); save it dequantised (float)")
        name = str(tensor.dtype).removeprefix("torch.")
        if name not in SUPPORTED_DTYPES:
            raise CheckpointError(f"{label}: {key} has dtype {name}, which the bridge does not convert")


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
    if array.dtype.name not in SUPPORTED_DTYPES:
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
