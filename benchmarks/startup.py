"""Start-up: ``flax2torch check`` (no arguments) against ``python -c "import jax, flax, torch"``.

Run: ``python benchmarks/startup.py`` (or ``nox -s bench``). Each command runs in a fresh process;
medians of the repeats. ``flax2torch check`` is timed cold (an empty compilation cache each run) and
warm (the cache filled by an earlier run, as from the second run on); also ``--no-grads`` and ``--help``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 5
CHECK = [sys.executable, "-m", "bridge", "check"]


def _seconds(command: list[str], cache: str) -> float:
    env = {**os.environ, "FLAX2TORCH_COMPILE_CACHE": cache, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - start


def _median(command: list[str], cache: str | None = None, *, cold: bool = False) -> float:
    times = []
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory() as fresh:
            times.append(_seconds(command, fresh if cold else (cache or "off")))
    return statistics.median(times)


def main() -> None:
    imports = _median([sys.executable, "-c", "import jax, flax, torch"])
    print(f'python -c "import jax, flax, torch"        {imports:.2f} s')
    with tempfile.TemporaryDirectory() as cache:
        for label, args in (("flax2torch check", []), ("flax2torch check --no-grads", ["--no-grads"])):
            cold = _median(CHECK + args, cold=True)
            _seconds(CHECK + args, cache)  # fills the cache
            warm = _median(CHECK + args, cache)
            print(
                f"{label:<28} cold {cold:.2f} s = {cold / imports:.2f} x   warm {warm:.2f} s = {warm / imports:.2f} x"
            )
    help_time = _median([sys.executable, "-m", "bridge", "--help"])
    print(f"flax2torch --help                           {help_time:.2f} s")
    print("target: flax2torch check < 1.5 x the imports")


if __name__ == "__main__":
    main()
