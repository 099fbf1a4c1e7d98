"""Models the benchmarks use, importable as ``--flax benchmarks.models:NAME``."""

from __future__ import annotations

import flax.linen as nn

# 16 Dense layers of 4096 x 4096 float32: 16 x 64 MiB of kernels, 1 GiB in all.
WIDTH, DEPTH = 4096, 16


def one_gib_mlp() -> nn.Sequential:
    """A chain of Dense layers whose kernels weigh 1 GiB (biases add 256 KiB)."""
    return nn.Sequential([nn.Dense(WIDTH) for _ in range(DEPTH)])


def tiny_mlp() -> nn.Sequential:
    """The same chain 8 wide: its conversion shows the memory of the interpreter and libraries alone."""
    return nn.Sequential([nn.Dense(8) for _ in range(DEPTH)])
