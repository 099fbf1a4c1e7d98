"""Progress of long operations (a check's phases, seeds of a sweep, tensors of a conversion): silent unless a
caller installs a sink, which the command line does on a terminal (a transient ``rich`` status line on stderr,
never in ``--json`` output or with ``--quiet``). Library users can watch too: ``with show_progress(print): ...``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

Sink = Callable[[str], None]
_SINK: ContextVar[Sink | None] = ContextVar("flax_torch_bridge_progress", default=None)


def step(line: str) -> None:
    """Say what the operation is doing now (``"comparing call 40 of 212"``); free when nobody listens."""
    sink = _SINK.get()
    if sink is not None:
        sink(line)


@contextlib.contextmanager
def show_progress(sink: Sink) -> Iterator[None]:
    """Send every progress line to ``sink`` while the block runs (in this thread or task)."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


@contextlib.contextmanager
def prefixed(prefix: str) -> Iterator[None]:
    """Inside the block, every line goes to the current sink after ``prefix`` (``"seed 3 of 40: "``)."""
    sink = _SINK.get()
    if sink is None:
        yield
        return
    with show_progress(lambda line: sink(prefix + line)):
        yield
