"""Checkpoints on disk: formats, streaming, atomic replacement, and the memory estimates that bound the work."""
