"""The torch twin of ``flax_impl.SeqMLP``: state-dict keys ``0.weight`` ... ``4.bias``."""

from __future__ import annotations

import torch


class SeqMLP(torch.nn.Sequential):
    """``Linear(in, hidden) -> ReLU -> Linear(hidden, hidden) -> ReLU -> Linear(hidden, out)``.

    Its own initialisation (kaiming uniform) never equals Flax's: load converted weights with
    ``bridge.load_into`` before comparing outputs.
    """

    def __init__(self, in_features: int, hidden: int, out: int, *, dtype: torch.dtype | None = None) -> None:
        super().__init__(
            torch.nn.Linear(in_features, hidden, dtype=dtype),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden, dtype=dtype),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, out, dtype=dtype),
        )
