"""A Hugging Face Flax checkpoint folder, read one tensor at a time.

The folder holds ``config.json`` and either ``flax_model.msgpack`` or shards ``flax_model-0000k-of-0000n.msgpack``
listed by ``flax_model.msgpack.index.json`` (``{"weight_map": {"bert/pooler/dense/kernel": shard}}``), as
``FlaxPreTrainedModel.save_pretrained`` writes them. Each shard is ``flax.serialization.to_bytes`` of a
nested dict; ``leaves`` walks it with msgpack's streaming reader, so one tensor (not the shard) is in memory
at a time. Data only: no code runs, shard names are plain file names inside the folder, sizes are checked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import msgpack
import numpy as np

from .._errors import CheckpointError
from ..io import MAX_DEPTH, SUPPORTED_DTYPES, regular_file_size

WEIGHTS = "flax_model.msgpack"
INDEX = "flax_model.msgpack.index.json"
CONFIG = "config.json"
_ARRAY, _SCALAR = 1, 3  # flax.serialization's msgpack extension codes
_CHUNKED = "__msgpack_chunked_array__"  # how flax stores an array over 1 GiB: {shape: {...}, chunks: {...}}


@dataclass(frozen=True)
class FlaxCheckpoint:
    """The weight files of a Flax checkpoint folder, in order, and the keys the index puts in each."""

    folder: Path
    shards: tuple[Path, ...]
    index: dict[str, str] | None  # flat key -> shard name; None for a single file

    @property
    def size(self) -> int:
        """Bytes of all weight files."""
        return sum(regular_file_size(shard) for shard in self.shards)


def open_checkpoint(folder: str | Path) -> FlaxCheckpoint:
    """The weight files of ``folder`` (single or sharded), checked to exist as regular files inside it.

    Raises:
        CheckpointError: no config, no weights, a damaged index, a shard that is missing or names another folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a folder; give the folder that holds config.json and flax_model.msgpack")
    if not (root / CONFIG).is_file():
        raise CheckpointError(f"{root}: has no {CONFIG}; a Hugging Face checkpoint folder holds one")
    if (root / INDEX).exists():
        weight_map = _read_index(root / INDEX)
        names = sorted(set(weight_map.values()))  # flax_model-0000k-of-0000n: zero-padded, in order
        for name in names:
            if Path(name).name != name or name in {"", ".", ".."}:
                raise CheckpointError(f"{root / INDEX}: shard {name!r} is not a file name in this folder")
        shards = tuple(root / name for name in names)
        for shard in shards:
            if not shard.exists():
                raise CheckpointError(f"{root / INDEX}: lists {shard.name}, which is not in the folder")
            regular_file_size(shard)
        return FlaxCheckpoint(root, shards, weight_map)
    if (root / WEIGHTS).exists():
        regular_file_size(root / WEIGHTS)
        return FlaxCheckpoint(root, (root / WEIGHTS,), None)
    raise CheckpointError(f"{root}: has neither {WEIGHTS} nor {INDEX}; is it a Flax checkpoint?")


def _read_index(path: Path) -> dict[str, str]:
    regular_file_size(path)
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: not a Flax index ({type(e).__name__}); it needs a weight_map") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path}: its weight_map is not a non-empty mapping of keys to shard files")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CheckpointError(f"{path}: its weight_map maps something other than text to text")
    return weight_map


def leaves(shard: Path) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """``(path, array)`` of every array in one msgpack file, in file order, one at a time.

    Raises:
        CheckpointError: the file is not a Flax msgpack dict of arrays, is truncated, or an array's bytes
            do not match its shape and dtype.
    """
    size = regular_file_size(shard)
    with shard.open("rb") as handle:
        unpacker = msgpack.Unpacker(
            handle, raw=False, ext_hook=_ext(shard), max_buffer_size=min(size + 1024, 2**31 - 1), strict_map_key=True
        )
        try:
            yield from _walk(unpacker, shard, (), unpacker.read_map_header())
            if unpacker.tell() != size:
                raise CheckpointError(f"{shard}: holds more than one msgpack object; a Flax file holds one")
        except (ValueError, TypeError, KeyError, msgpack.UnpackException, msgpack.OutOfData) as e:
            raise CheckpointError(
                f"{shard}: not a valid Flax msgpack file, or truncated ({type(e).__name__})"
            ) from None


def _walk(
    unpacker: msgpack.Unpacker, shard: Path, path: tuple[str, ...], entries: int
) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """The arrays of a map whose header (``entries`` pairs) has been read, depth first."""
    if len(path) > MAX_DEPTH:
        raise CheckpointError(f"{shard}: nested over {MAX_DEPTH} levels deep at {'/'.join(path[:5])}/...")
    for i in range(entries):
        key = unpacker.unpack()
        if not isinstance(key, str):
            raise CheckpointError(f"{shard}: a key under {'/'.join(path) or 'the top'} is not text")
        if i == 0 and key == _CHUNKED and path:
            yield path, _chunked(unpacker, shard, path, entries - 1)
            return
        where = (*path, key)
        position = unpacker.tell()
        try:
            count = unpacker.read_map_header()
        except ValueError:  # not a map: msgpack leaves its header unread
            if unpacker.tell() != position:
                raise CheckpointError(f"{shard}: this msgpack build cannot read a file in pieces") from None
            value = unpacker.unpack()
            if not isinstance(value, np.ndarray):
                raise CheckpointError(
                    f"{shard}: {'/'.join(where)} holds a {type(value).__name__}, not an array"
                ) from None
            yield where, value
            continue
        yield from _walk(unpacker, shard, where, count)


def _chunked(unpacker: msgpack.Unpacker, shard: Path, path: tuple[str, ...], rest: int) -> np.ndarray:
    """An array flax stored in chunks (over 1 GiB): ``{_CHUNKED: True, shape: {"0": n, ...}, chunks: {...}}``."""
    unpacker.unpack()  # the marker's value
    fields = {unpacker.unpack(): unpacker.unpack() for _ in range(rest)}
    try:
        shape = tuple(int(fields["shape"][str(i)]) for i in range(len(fields["shape"])))
        chunks = [fields["chunks"][str(i)] for i in range(len(fields["chunks"]))]
        array = np.concatenate(chunks).reshape(shape)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CheckpointError(f"{shard}: {'/'.join(path)} is a damaged chunked array") from None
    return array


def _ext(shard: Path) -> Callable[[int, bytes], np.ndarray]:
    """msgpack's hook for flax's extension types: an array (or a numpy scalar) as ``(shape, dtype, bytes)``."""

    def decode(code: int, data: bytes) -> np.ndarray:
        if code not in (_ARRAY, _SCALAR):
            raise CheckpointError(f"{shard}: holds msgpack extension type {code}, which Flax does not write")
        try:
            shape, name, buffer = msgpack.unpackb(data, raw=True)
            dtype_name = name.decode("ascii")
            dims = tuple(int(n) for n in shape)
        except (ValueError, TypeError, AttributeError, UnicodeDecodeError, msgpack.UnpackException):
            raise CheckpointError(f"{shard}: an array's header is damaged") from None
        if dtype_name not in SUPPORTED_DTYPES:
            raise CheckpointError(f"{shard}: an array has dtype {dtype_name!r}, which the bridge does not convert")
        dtype = np.dtype(ml_dtypes.bfloat16) if dtype_name == "bfloat16" else np.dtype(dtype_name)
        if any(n < 0 for n in dims) or math.prod(dims) * dtype.itemsize != len(buffer):
            raise CheckpointError(f"{shard}: an array of shape {dims} and dtype {dtype_name} has {len(buffer)} bytes")
        return np.frombuffer(buffer, dtype).reshape(dims)

    return decode
