"""The user's ``--flax``/``--torch`` code: imported last, from the current folder last, and contained.

A module or factory that raises ``SystemExit`` (``sys.exit(0)``), is interrupted (KeyboardInterrupt),
or fails to import (``SyntaxError`` and the like) becomes one ``InvalidArgumentError`` line (exit 2),
never a silent exit 0. ``os._exit`` is replaced while the command runs by a function that raises
``UserExitError``; what remains impossible to catch in-process is a direct ``posix._exit`` or a
signal the code sends itself: scripts should take the verdict line *and* exit code 0 together.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from .._errors import InvalidArgumentError, first_line

# imported before the current folder is on sys.path, so that a module of the same name there never shadows them:
# the libraries, and this project's own top-level packages (an editable install finds them only after every
# sys.path entry, the current folder included)
LIBRARIES = (
    "numpy", "jax", "flax.linen", "flax.serialization", "torch", "safetensors.torch", "msgpack",
    "flax_impl", "torch_impl",
)  # fmt: skip
# imported the same way when installed (psutil: the memory preflight); matplotlib only for --plot
OPTIONAL = ("psutil",)


class UserExitError(BaseException):
    """User code called ``os._exit`` while the command ran (a BaseException: ``except Exception`` lets it pass)."""


def libraries_first(checkpoints: Sequence[str | None] = (), optional: Sequence[str] = ()) -> None:
    """Take the current folder, which ``python -m`` puts first on ``sys.path``, off it; import the
    libraries the bridge uses (Orbax too when one of ``checkpoints`` is an Orbax folder); then put the
    folder back at the end, for user modules. A ``safetensors.py`` or ``orbax/`` there can then never
    replace a library. (Orbax is a namespace package: a regular package of its name anywhere on
    ``sys.path`` would win over it, so it is imported before the folder returns.) Entries set on
    purpose, through PYTHONPATH, stay where they are."""
    cwd = os.getcwd()
    here = ("", ".", cwd)
    kept = list(sys.path[1:] if sys.path and sys.path[0] in here else sys.path)
    sys.path[:] = [entry for entry in kept if entry not in here]  # nothing from the current folder, for now
    try:
        for name in LIBRARIES:
            importlib.import_module(name)
        for name in (*OPTIONAL, *optional):
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
        if any(path is not None and _is_orbax(path) for path in checkpoints):
            importlib.import_module("orbax.checkpoint")
    finally:
        sys.path[:] = kept if cwd in kept else [*kept, cwd]


def _is_orbax(path: str) -> bool:
    from .._errors import CheckpointError
    from ..io import checkpoint_format

    try:
        return checkpoint_format(path) == "orbax"
    except (CheckpointError, OSError):  # refused later, with the command's own message
        return False


def load_object(spec: str, option: str) -> Any:
    """The object named ``module:attr``, imported from the current folder (last on ``sys.path``) after
    the libraries; called when it is a class or a factory (``is_model`` says what need not be called).

    Raises:
        InvalidArgumentError: naming the option, for a bad spec, an import that fails or exits, or a
            factory that fails or exits.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidArgumentError(f"{option} takes MODULE:ATTR (e.g. mypkg.models:MLP), got {spec!r}")
    libraries_first()
    with contained(f"{option} {spec}", "importing it"):
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as e:
            raise InvalidArgumentError(f"{option} {spec}: {e}") from None
    if isinstance(target, type) or (callable(target) and not is_model(target)):
        with contained(f"{option} {spec}", "building it"):
            try:
                target = target()
            except TypeError as e:
                raise InvalidArgumentError(f"{option} {spec}: cannot call it with no arguments ({e})") from None
    if not is_model(target):
        raise InvalidArgumentError(f"{option} {spec} is a {type(target).__name__}, not a Flax or torch module")
    return target


@contextlib.contextmanager
def contained(what: str, doing: str, fix: str = "") -> Iterator[None]:
    """Turn whatever user code raises while ``doing`` (exits and interrupts included) into one line;
    ``fix`` ends the message of an ordinary exception."""
    try:
        yield
    except InvalidArgumentError:
        raise
    except SyntaxError as e:
        where = f"{e.filename}:{e.lineno}: " if e.filename else ""
        raise InvalidArgumentError(
            f"{what}: {doing} failed: {where}{type(e).__name__}: {e.msg}; fix the module"
        ) from None
    except SystemExit as e:
        raise InvalidArgumentError(f"{what}: {doing} called sys.exit({e.code!r}); no verdict (exit 2)") from None
    except UserExitError as e:
        raise InvalidArgumentError(f"{what}: {doing} called os._exit({e}); no verdict (exit 2)") from None
    except KeyboardInterrupt:
        raise InvalidArgumentError(f"{what}: {doing} was interrupted (KeyboardInterrupt)") from None
    except Exception as e:  # the user's code may raise anything
        problem = f"{type(e).__name__}: {first_line(e)[:200]}"
        raise InvalidArgumentError(f"{what}: {doing} failed: {problem}{fix}") from None


@contextlib.contextmanager
def no_hard_exit() -> Iterator[None]:
    """While the command runs, ``os._exit`` (called from Python in this process) raises ``UserExitError``."""
    real = os._exit
    owner = os.getpid()

    def refuse(status: int) -> NoReturn:
        if os.getpid() != owner:  # a forked child: exit as asked
            real(status)
        raise UserExitError(status)

    os._exit = refuse
    try:
        yield
    finally:
        os._exit = real


def is_model(obj: Any) -> bool:
    """Whether ``obj`` is a Flax (linen or NNX) or torch module (a factory of one is not)."""
    import flax.linen as nn
    import torch
    from flax import nnx

    return isinstance(obj, nn.Module | nnx.Module | torch.nn.Module)
