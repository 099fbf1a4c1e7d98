"""The exception hierarchy: every error the package raises is a ``BridgeError``.

Each message says what is wrong, where (layer position and Flax path, or file), and what to do.
"""

from __future__ import annotations

from typing import Any


class BridgeError(Exception):
    """Base of every error raised by ``bridge``."""


class InvalidArgumentError(BridgeError, ValueError):
    """An argument given to a bridge function is out of its domain (the message names it)."""


class UnsupportedModelError(BridgeError):
    """The Flax model is not a chain of layers the bridge can discover (a single ``nn.Sequential``)."""


class UnknownLayerError(BridgeError):
    """A layer kind (Flax module, function, or torch module) has no conversion rule."""


class LayerMismatchError(BridgeError):
    """Parameters or modules do not match the layer they are meant for: missing, unexpected or mis-shaped."""


class TiedWeightsWarning(UserWarning):
    """``load_into`` filled several port tensors from one Flax variable (tied embeddings, a module used twice)."""


class ReassignedWarning(UserWarning):
    """``load_into`` gave same-shape layers fed one input (query and key) other port modules than call order
    did: the only assignment under which the port computes the Flax output. Its names may then say otherwise
    (a forward that uses them swapped); pass ``mapping=`` to load by your names instead."""


class RuleRegistrationError(BridgeError):
    """A conversion rule was registered for a layer kind that already has one."""


def at_layer(index: int, flax_path: tuple[str, ...] | str, kind: str) -> str:
    """The prefix that names a layer in error messages: ``layer 2 (Dense at 'Dense_1')``."""
    path = flax_path if isinstance(flax_path, str) else "/".join(flax_path)
    where = f" at '{path}'" if path else ""
    return f"layer {index} ({kind}{where})"


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (without the notes JAX appends under a trace), or its type."""
    lines = str(error).splitlines()
    return lines[0] if lines else type(error).__name__


class NotEquivalentError(BridgeError, AssertionError):
    """A port or conversion was checked and does not compute the Flax model's function: ``report`` says where.

    The one "not equivalent" of the API (``assert_equivalent``, ``to_torch(check=True)``, exports); an
    ``AssertionError`` too, so a test that checks a port fails as a failed assertion, not an error."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class InsufficientMemoryError(BridgeError):
    """The work asked for would not fit in the memory available (the message gives both figures)."""


class OutputExistsError(BridgeError):
    """The destination exists and overwriting it was not asked for."""


class OutputRefusedError(BridgeError):
    """The destination may not be replaced, even with ``force``: not a checkpoint, or a folder in use."""


class DestinationError(BridgeError):
    """The destination cannot be written: its folder is missing or read-only, or its name is too long."""


class LeftoverWarning(UserWarning):
    """Temporaries of an interrupted write were removed (or a folder destination put back)."""


class CheckpointError(BridgeError):
    """A checkpoint is missing, empty, truncated, of the wrong format, unsafe, or does not fit the model."""


class NonFiniteWarning(UserWarning):
    """A checkpoint holds NaN or Inf values (an error instead with ``strict=True``)."""
