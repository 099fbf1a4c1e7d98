"""Atomic output: write next to the destination, then rename; on any failure nothing is left behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ._errors import BridgeError


class OutputExistsError(BridgeError):
    """The destination exists and overwriting it was not asked for."""


@contextlib.contextmanager
def atomic_output(destination: str | Path, *, force: bool = False, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the destination's folder; rename it onto ``destination`` on success.

    Raises:
        OutputExistsError: when ``destination`` exists and ``force`` is false (checked first).
    """
    target = Path(destination)
    if target.exists() and not force:
        raise OutputExistsError(f"{target}: already exists; pass --force (force=True) to overwrite it")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise BridgeError(f"{target}: the folder {parent} does not exist")
    if directory:
        temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=parent))
        temporary.rmdir()  # writers (Orbax) create the folder themselves
    else:
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=parent)
        os.close(handle)
        temporary = Path(name)
    try:
        yield temporary
        if directory and target.exists():
            _remove(target)
        os.replace(temporary, target)
    except BaseException:
        _remove(temporary)
        raise


def _remove(path: Path) -> None:
    if path.is_dir():
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
