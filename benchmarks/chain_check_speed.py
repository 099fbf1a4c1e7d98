"""The cost of checking a chain against running both frameworks once (issue 12's measure).

Run: ``python benchmarks/chain_check_speed.py`` (a 1024-4096-4096-1024 ReLU MLP, batch 32). Prints, side
by side in one process, warm: Flax's jitted ``jax.grad`` plus torch's forward and backward of the port, and
``bridge.check_equivalence`` with and without gradients, and the ratios.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bridge


def main() -> None:
    model = nn.Sequential([nn.Dense(4096), nn.relu, nn.Dense(4096), nn.relu, nn.Dense(1024)])
    x = np.random.default_rng(0).normal(size=(32, 1024)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    port = bridge.to_torch(model, variables)
    grad = jax.jit(jax.grad(lambda p, x: model.apply({"params": p}, x).sum()))

    def baseline() -> None:
        jax.block_until_ready(grad(variables["params"], x))
        port(torch.from_numpy(x)).sum().backward()
        port.zero_grad()

    def timed(function: object, repeats: int = 3) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            function()  # type: ignore[operator]
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    baseline()
    bridge.check_equivalence(model, variables, port, x)  # warm both
    base = timed(baseline)
    for grads in (True, False):
        checked = timed(lambda grads=grads: bridge.check_equivalence(model, variables, port, x, grads=grads))
        print(f"check_equivalence grads={grads}: {checked:.2f} s against {base:.3f} s: {checked / base:.1f}x")


if __name__ == "__main__":
    main()
