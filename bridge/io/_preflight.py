"""Bounded work: estimate what a command will hold in memory and refuse, with the figures, what cannot fit.

Without this an oversized ``--n-inputs`` or width grows until the kernel kills the process, or XLA
aborts it (no Python error, no message). The estimates are deliberately rough (a factor over the
arrays the command itself makes); they refuse only what is far out of reach.
"""

from __future__ import annotations

from pathlib import Path

from .._errors import InsufficientMemoryError

_GIB = 2**30


def available_memory() -> int | None:
    """Bytes this process may still allocate: psutil's or ``/proc/meminfo``'s MemAvailable, capped by a
    cgroup v2 limit; None when unknown (then nothing is refused)."""
    available: int | None = None
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unable: fall back to /proc
        try:
            with open("/proc/meminfo", encoding="ascii") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        available = int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            available = None
    limit = _cgroup_room()
    if limit is not None:
        available = limit if available is None else min(available, limit)
    return available


def _cgroup_room() -> int | None:
    base = Path("/sys/fs/cgroup")
    try:
        maximum = (base / "memory.max").read_text().strip()
        if maximum == "max":
            return None
        current = int((base / "memory.current").read_text().strip())
        return max(int(maximum) - current, 0)
    except (OSError, ValueError):
        return None


def require_memory(needed: int, what: str, fix: str) -> None:
    """Raise ``InsufficientMemoryError`` when ``needed`` bytes exceed the memory available.

    Arguments:
        what: the work, as the message's subject (``"--n-inputs 400000000 rows of width 3"``).
        fix: what to do instead (``"use fewer --n-inputs"``).
    """
    available = available_memory()
    if available is not None and needed > available:
        raise InsufficientMemoryError(
            f"{what} needs about {needed / _GIB:.1f} GiB of memory, {available / _GIB:.1f} GiB is available; {fix}"
        )


def file_fits(path: Path, size: int, factor: float) -> None:
    """Refuse a file whose reading needs ``factor`` times its ``size`` bytes when that does not fit."""
    require_memory(
        int(size * factor), f"reading {path} ({size / _GIB:.2f} GiB)", "free memory or convert on a larger machine"
    )
