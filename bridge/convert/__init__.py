"""Weights through the rules (``to_torch``, ``load_into``, ``to_flax``), the tree loader, and the jaxpr ->
torch translator with its export."""
