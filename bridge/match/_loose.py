"""Variables outside rule-backed layers (a class token, a position table, a relative position bias) and the
port tensors that hold them, so that every Flax variable ends in exactly one torch tensor or is named.

A loose Flax variable belongs to the deepest Flax module above it that the matching located (a matched
block, or the parent of a matched layer beside it: ``embeddings`` for ``embeddings/cls_token``); it pairs
with the one port tensor of the same shape inside that module's torch counterpart that no matched layer
holds. Where several fit, the one holding the same values decides (a loaded
port), then the one of the same name; otherwise it stays unpaired and is named: never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from flax import traverse_util

from .._tensors import plain_tree, to_numpy
from ..capture import Call
from ._match import port_tensors
from ._match_tree import Matching, Pair, pair_blocks

# torch bookkeeping with no Flax counterpart and no effect on the function.
_TORCH_BOOKKEEPING = frozenset({"num_batches_tracked"})


@dataclass(frozen=True)
class LoosePair:
    """A Flax variable outside rule-backed layers (``params/embeddings/cls_token``) and its port tensor."""

    flax_path: str
    collection: str
    array: np.ndarray
    torch_name: str
    tensor: torch.Tensor
    # the port holds the 2-D array transposed (GPT-2's Conv1D keeps (in, out) where Flax keeps (out, in));
    # ``settled`` False: a square array whose layout a fresh port cannot tell (``load_into`` runs the module)
    transposed: bool = False
    settled: bool = True

    @property
    def flax_module(self) -> str:
        """The path of the Flax module holding the variable (``embeddings`` for ``params/embeddings/cls_token``)."""
        return _module_path(self.flax_path)

    @property
    def torch_module(self) -> str:
        """The name of the torch module holding the tensor (``embeddings`` for ``embeddings.cls_token``)."""
        return self.torch_name.rpartition(".")[0]

    @property
    def laid_out(self) -> np.ndarray:
        """The Flax array in the port's layout."""
        return self.array.T if self.transposed else self.array


@dataclass(frozen=True)
class LooseVariables:
    """The loose pairs, the Flax variables no port tensor takes, and the port tensors nothing fills or
    compares (qualified names), each sorted."""

    pairs: tuple[LoosePair, ...]
    unfilled_flax: tuple[str, ...]
    unfilled_torch: tuple[str, ...]


# A chain's: every variable belongs to a position (``discover_chain``), every port tensor to a child.
NO_LOOSE = LooseVariables((), (), ())


def match_loose(
    matching: Matching, variables: Mapping[str, Any], port: torch.nn.Module, *, by_value: bool
) -> LooseVariables:
    """Pair the variables that no matched layer holds (see the module docstring). ``by_value``: the port is
    loaded already, so equal values may decide between tensors of one shape."""
    leaves = [p for p in matching.pairs if p.rule is not None]
    # a rule-backed layer left unmatched is reported as such: its variables are its rule's, never loose
    owned = {p.flax.name for p in leaves if p.flax.name or p.flax.variables}  # a chain's relu owns nothing
    owned |= {c.name for c in matching.unmatched_flax if c.name or c.variables}
    held = {id(t) for p in leaves for t in port_tensors(p.torch.module).values()}
    loose_torch: dict[str, torch.Tensor] = {}
    for name, tensor in port_tensors(port).items():
        if id(tensor) not in held and name.rsplit(".", 1)[-1] not in _TORCH_BOOKKEEPING:
            loose_torch.setdefault(name, tensor)
    flat = traverse_util.flatten_dict(plain_tree(variables), sep="/")
    loose_flax = {
        path: np.asarray(value) for path, value in sorted(flat.items()) if not _inside_any(_module_path(path), owned)
    }
    taken: set[str] = set()
    pairs: list[LoosePair] = []
    for unique_only in (True, False):  # the unambiguous first, so that they leave the others fewer to choose from
        for path, array in loose_flax.items():
            if any(p.flax_path == path for p in pairs):
                continue
            owner = _owner(_module_path(path), matching.pairs)
            found = _torch_tensor(path, array, owner, loose_torch, taken, by_value=by_value, unique_only=unique_only)
            if found is not None:
                name, transposed = found
                taken.add(name)
                pairs.append(
                    _laid_out(
                        LoosePair(path, path.split("/", 1)[0], array, name, loose_torch[name], transposed), by_value
                    )
                )
    paired = {p.flax_path for p in pairs}
    return LooseVariables(
        tuple(pairs),
        tuple(path for path in loose_flax if path not in paired),
        tuple(sorted(name for name in loose_torch if name not in taken)),
    )


def pair_own_calls(
    matching: Matching, loose: LooseVariables, flax_calls: Sequence[Call], torch_calls: Sequence[Call]
) -> None:
    """Pair the calls of modules without a rule that hold loose variables (an RMSNorm or a Conv1D of the
    port's own, a weight-normed conv) with the torch module holding exactly their tensors, so that a mistake
    inside one is located there rather than at the next matched layer; then pair the blocks around them again
    with them as leaves (a block's counterpart holds all its leaves' partners: T5's feed-forward layer with
    its norm, not its inner MLP alone)."""
    paired = {p.flax.index for p in matching.pairs}
    flax_by_name = {c.name: c for c in reversed(flax_calls) if c.name}
    torch_by_name = {c.name: c for c in reversed(torch_calls) if c.name}
    by_module: dict[str, list[LoosePair]] = {}
    for held in loose.pairs:
        by_module.setdefault(held.flax_module, []).append(held)
    own = []
    for flax_name, helds in by_module.items():
        # the torch module holding them all (a weight-normed conv: its bias, and its parametrisation's tensors)
        torch_name = ".".join(_shared_head([held.torch_module.split(".") for held in helds]))
        flax_call, torch_call = flax_by_name.get(flax_name), torch_by_name.get(torch_name)
        if flax_call is None or torch_call is None or flax_call.index in paired or flax_call.children:
            continue
        # only a torch module holding exactly these tensors computes what the Flax module computes
        if {id(t) for t in port_tensors(torch_call.module).values()} == {id(held.tensor) for held in helds}:
            own.append(Pair(flax_call, torch_call, None))
    if not own:
        return
    leaves = [p for p in matching.pairs if p.rule is not None or not p.flax.children] + own
    matching.pairs = sorted([*leaves, *pair_blocks(flax_calls, torch_calls, leaves)], key=lambda p: p.flax.index)


def _module_path(path: str) -> str:
    """``params/embeddings/cls_token`` -> ``embeddings`` (the collection and the variable's name left out)."""
    parts = path.split("/")
    return "/".join(parts[1:-1])


def _inside_any(module_path: str, call_names: set[str]) -> bool:
    """Whether ``module_path`` is one of ``call_names`` or lies below one (``""``, the model, holds everything):
    its prefixes looked up, so that a model of n layers costs n lookups, not n * n comparisons."""
    parts = module_path.split("/") if module_path else []
    return any("/".join(parts[:end]) in call_names for end in range(len(parts) + 1))


def _owner(module_path: str, pairs: Sequence[Pair]) -> str:
    """The torch module that corresponds to the deepest Flax module above ``module_path`` that the matching
    located: a matched composite holding it, or the module as many levels above a matched layer as that layer
    lies below their shared Flax path (``ff/norm`` beside ``ff/dense`` <-> ``ff.dense``: ``ff``); where
    several such pairs disagree, the module that holds all their answers ("" for the port itself)."""
    parts = module_path.split("/") if module_path else []
    best, scopes = 0, [""]
    for pair in pairs:
        if not pair.flax.name or not pair.torch.name:
            continue
        flax_parts = pair.flax.name.split("/")
        shared = len(_shared_head([parts, flax_parts]))
        below = len(flax_parts) - shared
        torch_parts = pair.torch.name.split(".")
        if shared == 0 or below >= len(torch_parts) or shared < best:
            continue
        scope = ".".join(torch_parts[: len(torch_parts) - below])
        if shared > best:
            best, scopes = shared, []
        scopes.append(scope)
    return ".".join(_shared_head([scope.split(".") for scope in scopes]))


def _laid_out(pair: LoosePair, by_value: bool) -> LoosePair:
    """A square 2-D pair's layout: told by the values a loaded port holds, else left for ``load_into`` to settle."""
    array = pair.array
    if array.ndim != 2 or array.shape[0] != array.shape[1] or pair.transposed:
        return pair
    if not by_value:
        return replace(pair, settled=False)
    held = to_numpy(pair.tensor)
    if not np.array_equal(held.astype(array.dtype), array) and np.array_equal(held.astype(array.dtype), array.T):
        return replace(pair, transposed=True)
    return pair


def _torch_tensor(
    path: str,
    array: np.ndarray,
    owner: str,
    loose_torch: Mapping[str, torch.Tensor],
    taken: set[str],
    *,
    by_value: bool,
    unique_only: bool,
) -> tuple[str, bool] | None:
    """The port tensor that takes one loose Flax variable, and whether it holds it transposed (a 2-D array
    fits a tensor of its shape or, not square, of its reversed shape). Among those that fit, inside the
    innermost of the owner's subtree and its ancestors where any fits: the one holding its values (a loaded
    port), else the one whose module has the same path (``h/0/mlp/c_fc`` and ``h.0.mlp.c_fc``), else the
    only one; None otherwise."""
    reversed_shape = array.shape[::-1] if array.ndim == 2 and array.shape[0] != array.shape[1] else None
    fit = [n for n, t in loose_torch.items() if n not in taken and tuple(t.shape) in (array.shape, reversed_shape)]
    scope = _innermost_scope(fit, owner)
    if not scope:
        return None

    def layout(name: str) -> tuple[str, bool]:
        return name, tuple(loose_torch[name].shape) != array.shape

    if by_value:
        equal = [n for n in scope if np.array_equal(_in_flax_layout(loose_torch[n], array), array)]
        if len(equal) == 1:
            return layout(equal[0])
        scope = equal or scope
    module_parts = path.split("/")[1:-1]
    scores = {n: _common_tail(module_parts, n.split(".")[:-1]) for n in scope}
    best = max(scores.values())
    chosen = [n for n, score in scores.items() if score == best]
    if best > 0 and len(chosen) == 1:
        return layout(chosen[0])
    if len(scope) == 1 and (best == 0 or not unique_only):
        return layout(scope[0])
    return None


def _in_flax_layout(tensor: torch.Tensor, array: np.ndarray) -> np.ndarray:
    """A port tensor's values in the Flax array's layout (transposed back where its shape is reversed)."""
    held = to_numpy(tensor).astype(array.dtype)
    return held.T if held.shape != array.shape else held


def _innermost_scope(names: Sequence[str], owner: str) -> list[str]:
    """The names under ``owner``, else under its parent, and so on up to the whole port (a block paired with
    a smaller torch subtree than the one holding its variables: T5's feed-forward and its norm's weight)."""
    prefix = owner
    while True:
        found = _under(names, prefix)
        if found or not prefix:
            return found
        prefix = prefix.rpartition(".")[0]


def _under(names: Sequence[str], prefix: str) -> list[str]:
    return [n for n in names if not prefix or n.startswith(prefix + ".")]


def _common_tail(a: Sequence[str], b: Sequence[str]) -> int:
    """How many trailing parts two paths share."""
    return len(_shared_head([list(reversed(a)), list(reversed(b))]))


def _shared_head(paths: Sequence[Sequence[str]]) -> list[str]:
    """The leading parts that every path shares."""
    head = []
    for level in zip(*paths, strict=False):
        if len(set(level)) != 1:
            break
        head.append(level[0])
    return head
