"""Pair the Flax side with the torch side by structure: the tensors a port's module owns (``_match``), and
call trees (``_match_tree``)."""
