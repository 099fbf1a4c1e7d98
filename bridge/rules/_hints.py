"""What a rule's hints read of the call that diverged, and how they try a suspected porting mistake.

Each rule owns the hints of its layer kind (``LayerRule.hints``): a hint re-creates one known mistake on
the Flax side (an untransposed kernel, torch's default epsilon, symmetric padding, ...) and names it when
the mistaken output reproduces what the torch layer computed. The checker builds the context and judges
"reproduces" with its own comparison; the hints that fit any layer kind stay with the checker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax.numpy as jnp
import numpy as np
import torch

from .._flax_model import run_layer

if TYPE_CHECKING:
    from ._registry import LayerRule


class HintContext(NamedTuple):
    """The divergent call: the Flax layer, its variables, path and kind, the torch module there (None if
    missing), the Flax layer's input and output, the torch layer's output on that same input, and
    ``judge``, the checker's test of whether a mistaken Flax output reproduces the torch output."""

    layer: Any
    variables: Mapping[str, Mapping[str, Any]]
    flax_path: tuple[str, ...]
    kind: str
    torch_module: torch.nn.Module | None
    x: np.ndarray
    flax_out: np.ndarray
    torch_out: np.ndarray | None
    judge: Callable[[Any], bool]
    # For the layer after a channels-first flatten in torch's order: Flax feature j is torch column perm[j].
    input_permutation: np.ndarray | None = None
    # The rule of the call: a method's own (Embed.attend) where it is not the layer's.
    rule: LayerRule | None = None

    def reproduces(self, candidate: Any) -> bool:
        """Whether ``candidate`` (a mistaken Flax output) reproduces the torch output within the tolerance."""
        return self.torch_out is not None and self.judge(candidate)

    def rerun(self, x: np.ndarray, **changes: Any) -> np.ndarray:
        """The Flax layer run alone on ``x``, with changed attributes (``epsilon=1e-5``)."""
        return np.asarray(run_layer(self.layer, self.variables, jnp.asarray(x), **changes))


Hint = Callable[[HintContext], str | None]
