"""Peak memory of converting a 1 GiB .safetensors checkpoint to Flax .msgpack with ``flax2torch convert``.

Run: ``python benchmarks/checkpoint_rss.py`` (or ``nox -s bench``). It writes the checkpoint in a
temporary folder, then measures the peak resident set size (``ru_maxrss``) of three child processes:
the bare imports, the same conversion of a tiny checkpoint (the interpreter's baseline with every
library loaded), and the 1 GiB conversion, each three times; it prints medians and the excess.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEASURE = (
    "import resource, subprocess, sys; "
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)
WRITE = """
import sys, numpy as np, torch
from safetensors.torch import save_file
width, depth = int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
state = {}
for i in range(depth):
    state[f"{i}.weight"] = torch.from_numpy(rng.standard_normal((width, width), dtype=np.float32))
    state[f"{i}.bias"] = torch.from_numpy(rng.standard_normal(width, dtype=np.float32))
save_file(state, sys.argv[1])
"""


def peak_kib(*command: str) -> int:
    """Peak RSS (KiB) of ``command`` run as a child of a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *command], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from benchmarks.models import DEPTH, WIDTH

    env_note = f"python {sys.version.split()[0]}, {os.cpu_count()} cpus"
    with tempfile.TemporaryDirectory() as folder:
        big, tiny = Path(folder) / "big.safetensors", Path(folder) / "tiny.safetensors"
        subprocess.run([sys.executable, "-c", WRITE, str(big), str(WIDTH), str(DEPTH)], check=True)
        subprocess.run([sys.executable, "-c", WRITE, str(tiny), "8", str(DEPTH)], check=True)
        size_gib = big.stat().st_size / 2**30
        convert = [sys.executable, "-m", "bridge", "convert", "--no-check", "--flax"]
        runs: dict[str, list[int]] = {"imports": [], "tiny": [], "big": []}
        for attempt in range(3):
            runs["imports"].append(
                peak_kib(
                    sys.executable,
                    "-c",
                    "import bridge.cli._commands, bridge.io, jax, flax, torch, safetensors",
                )
            )
            out = Path(folder) / f"tiny{attempt}.msgpack"
            runs["tiny"].append(
                peak_kib(*convert, "benchmarks.models:tiny_mlp", "--in-features", "8", str(tiny), str(out))
            )
            out = Path(folder) / f"big{attempt}.msgpack"
            runs["big"].append(
                peak_kib(*convert, "benchmarks.models:one_gib_mlp", "--in-features", str(WIDTH), str(big), str(out))
            )
    median = {name: statistics.median(values) / 2**20 for name, values in runs.items()}
    print(f"checkpoint: {size_gib:.3f} GiB safetensors ({DEPTH} x {WIDTH}x{WIDTH} float32), {env_note}")
    for name, values in runs.items():
        print(f"peak RSS {name:8s}: median {median[name]:.3f} GiB  runs {[round(v / 2**20, 3) for v in values]}")
    excess = median["big"] - median["tiny"]
    print(f"excess over the interpreter with the same libraries (tiny conversion): {excess:.3f} GiB")
    print(f"excess over bare imports: {median['big'] - median['imports']:.3f} GiB (target < 1.5 GiB)")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
