"""Hand-written PyTorch twins of the reference Flax models (pure torch: no JAX import)."""

from ._seq_mlp import SeqMLP as SeqMLP

__all__ = ["SeqMLP"]
