"""Streaming conversion of a torch ``.safetensors`` file into Flax ``.msgpack``, one tensor at a time.

``safetensors`` maps the file and reads each tensor on demand; the msgpack map is written as it
goes (its headers only need the counts, known from the model). Peak memory stays near the largest
tensor plus its encoding, not several copies of the model. The bytes are those of
``flax.serialization.to_bytes``: arrays as msgpack extension 1, ``(shape, dtype name, C bytes)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np

from .. import _progress as progress
from .._errors import CheckpointError
from .._tensors import to_numpy
from ..convert import plan
from ..rules import ParamMap
from ._files import (
    SAFETENSORS_DTYPES,
    check_safetensors_dtypes,
    check_tensor,
    regular_file_size,
)

_NDARRAY_EXT = 1  # flax.serialization's extension code for ndarrays
_MAX_ARRAY_BYTES = 2**30  # Flax chunks larger arrays; this writer does not


def write_stream(source: str | Path, temporary: Path, model: Any, target: Any, *, strict: bool = False) -> None:
    """Write the Flax variables of ``model`` held by a torch-keyed ``.safetensors`` file as ``.msgpack`` into
    ``temporary`` (a path from ``atomic_output``, which replaces the destination only after the checks).

    Arguments:
        target: the model's variables or their shapes (``jax.eval_shape(model.init, ...)``): the tree to write.

    Raises:
        CheckpointError: for a missing, empty or damaged file, keys or shapes that do not fit the model
            (checked before anything is written), NaN/Inf with ``strict``.
    """
    from safetensors import SafetensorError, safe_open

    source = Path(source)
    regular_file_size(source)
    entries: dict[tuple[str, ...], tuple[str, ParamMap]] = {}
    planned = plan(model, target)
    for step, rule in planned:
        for m in rule.param_maps(step.layer, step.variables):
            entries[(m.collection, *step.flax_path, m.flax_name)] = (f"{step.index}.{m.torch_name}", m)
    try:
        with safe_open(str(source), framework="pt") as reader:
            check_safetensors_dtypes(source, reader)
            _check_layout(source, reader, entries, target, planned)
            with temporary.open("wb") as out:
                _write_tree(out, _nest(entries), reader, source, strict)
    except SafetensorError as e:
        raise CheckpointError(f"{source}: not a valid safetensors file, or truncated ({str(e)[:200]})") from None


def _check_layout(
    source: Path, reader: Any, entries: dict[tuple[str, ...], tuple[str, ParamMap]], target: Any, planned: Any
) -> None:
    found = set(reader.keys())
    wanted = {key for key, _ in entries.values()}
    torch_only = {f"{step.index}.{name}" for step, rule in planned for name in rule.torch_only_keys}
    problems = [f"missing {key}" for key in sorted(wanted - found)]
    problems += [f"unexpected {key}" for key in sorted(found - wanted - torch_only)]
    for path, (key, m) in entries.items():
        if key in found:
            shape = tuple(reader.get_slice(key).get_shape())
            flax_shape = shape if m.to_torch_axes is None else tuple(shape[i] for i in np.argsort(m.to_torch_axes))
            expected = _shape_at(target, path)
            if flax_shape != expected:
                problems.append(f"{key} gives {'/'.join(path)} shape {flax_shape}, the model has {expected}")
            dtype, wanted_dtype = SAFETENSORS_DTYPES[reader.get_slice(key).get_dtype()], _dtype_at(target, path)
            if dtype != wanted_dtype:  # as the other directions refuse it (when the result is read back)
                problems.append(f"{key} gives {'/'.join(path)} dtype {dtype}, the model has {wanted_dtype}")
    if problems:
        raise CheckpointError(f"{source}: does not fit the model: " + "; ".join(problems[:8]))


def _shape_at(tree: Any, path: tuple[str, ...]) -> tuple[int, ...]:
    for part in path:
        tree = tree[part]
    return tuple(tree.shape)


def _dtype_at(tree: Any, path: tuple[str, ...]) -> str:
    for part in path:
        tree = tree[part]
    return str(np.dtype(tree.dtype).name)


def _nest(entries: dict[tuple[str, ...], tuple[str, ParamMap]]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, leaf in entries.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = leaf
    return tree


def _write_tree(out: BinaryIO, tree: dict[str, Any], reader: Any, source: Path, strict: bool) -> None:
    packer = msgpack.Packer(use_bin_type=True)
    out.write(packer.pack_map_header(len(tree)))
    for name in tree:  # chain order, each layer's variables in its rule's order: Flax's creation order
        out.write(packer.pack(name))
        node = tree[name]
        if isinstance(node, dict):
            _write_tree(out, node, reader, source, strict)
            continue
        key, m = node
        progress.step(f"streaming {key}")
        array = np.ascontiguousarray(m.torch_to_flax(to_numpy(reader.get_tensor(key))))
        if array.nbytes >= _MAX_ARRAY_BYTES:
            raise CheckpointError(f"{source}: {key} is {array.nbytes} bytes; tensors of 1 GiB or more are not streamed")
        check_tensor(source, key, array, strict=strict)
        payload = msgpack.packb((array.shape, array.dtype.name, array.tobytes("C")), use_bin_type=True)
        out.write(packer.pack(msgpack.ExtType(_NDARRAY_EXT, payload)))
        del array, payload
