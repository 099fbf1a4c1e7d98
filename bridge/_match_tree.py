"""Pair the Flax call tree with the torch call tree by structure, never by names.

Leaves are the Flax calls whose module has a rule and holds variables: each is paired with a torch call
whose module holds exactly the tensors the rule lays out from its variables (the same shapes and dtypes,
the parameter signature) and that the rule accepts (its own torch type, or a module no rule claims).
A signature that occurs once on each side matches wherever it runs (branches may run in another order
in the port); equal signatures pair in call order; what stays unpaired is listed. A Flax composite
with a rule of its own (attention) matches as one unit when a torch module fits it, else its children
are matched. ``mapping`` (Flax path glob -> torch name glob) pairs calls first. Composites without a
rule pair with the smallest torch subtree covering their matched leaves.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flax import nnx

from ._capture_tree import Call
from ._chain import discover_chain
from ._errors import LayerMismatchError, UnsupportedModelError
from ._flax_model import is_nnx
from ._match import port_tensors
from ._tensors import to_numpy
from .rules import LayerRule
from .rules._registry import rule_or_none

Signature = tuple[tuple[tuple[int, ...], str], ...]


@dataclass
class Pair:
    """A Flax call and the torch call that ports it; ``rule`` for leaves (None for composites)."""

    flax: Call
    torch: Call
    rule: LayerRule | None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # the torch tensors the rule lays out
    # Flax input feature j is torch input feature permutation[j] (a Linear after torch.flatten of NCHW)
    input_permutation: np.ndarray | None = None


@dataclass
class Matching:
    """Every pair in Flax execution order, and what stayed unpaired on each side."""

    pairs: list[Pair]
    unmatched_flax: list[Call]
    unmatched_torch: list[Call]


def signature(arrays: Mapping[str, Any]) -> Signature:
    """The multiset of (shape, dtype) of a set of tensors or arrays, as a sorted tuple."""
    return tuple(sorted((tuple(int(d) for d in a.shape), str(a.dtype).removeprefix("torch.")) for a in arrays.values()))


def torch_signature(module: torch.nn.Module, rule: LayerRule | None = None) -> Signature:
    """The signature of every parameter and buffer in ``module``'s subtree (the rule's torch-only ones left out)."""
    skip = set(rule.torch_only_keys) if rule is not None else {"num_batches_tracked"}
    return signature({k: v for k, v in port_tensors(module).items() if k.rsplit(".", 1)[-1] not in skip})


def match_calls(flax_calls: Sequence[Call], torch_calls: Sequence[Call], mapping: Mapping[str, str] | None) -> Matching:
    """Pair the two call trees (see the module docstring)."""
    leaves = _flax_leaves(flax_calls)
    taken: set[int] = set()
    pairs: list[Pair] = []
    unmatched: list[Call] = []
    candidates = [c for c in torch_calls if port_tensors(c.module)]
    for flax_glob, torch_glob in (mapping or {}).items():
        chosen_flax = [c for c in leaves if fnmatch.fnmatchcase(c.name, flax_glob)]
        chosen_torch = [c for c in candidates if fnmatch.fnmatchcase(c.name, torch_glob) and c.index not in taken]
        if not chosen_flax or len(chosen_flax) != len(chosen_torch):
            raise LayerMismatchError(
                f"mapping {flax_glob!r} -> {torch_glob!r} selects {len(chosen_flax)} Flax and {len(chosen_torch)} "
                "torch calls; each side must select the same number (one or more)"
            )
        for f, t in zip(chosen_flax, chosen_torch, strict=True):
            rule = _rule(f)
            arrays = rule.torch_arrays(f.module, f.variables) if rule else {}
            if rule is not None and torch_signature(t.module, rule) != signature(arrays):
                raise LayerMismatchError(
                    f"mapping pairs Flax {f.name} ({f.kind}) with torch {t.name} ({t.kind}), whose tensors "
                    f"{list(torch_signature(t.module, rule))} do not fit the ones it needs {list(signature(arrays))}"
                )
            pairs.append(Pair(f, t, rule, arrays))
            taken.add(t.index)
        leaves = [c for c in leaves if c not in chosen_flax]
    groups: dict[Signature, list[tuple[Call, LayerRule, dict[str, np.ndarray]]]] = {}
    for call in _expand(leaves, flax_calls, candidates):
        rule = _rule(call)
        assert rule is not None
        arrays = rule.torch_arrays(call.module, call.variables)
        groups.setdefault(signature(arrays), []).append((call, rule, arrays))
    for sig, flax_group in groups.items():
        fitting = [
            t
            for t in candidates
            if t.index not in taken
            and torch_signature(t.module, flax_group[0][1]) == sig
            and flax_group[0][1].accepts_torch(t.module)
        ]
        fitting = _innermost(fitting, torch_calls)
        waiting = []
        for call, rule, arrays in flax_group:  # ties resolved by values where the port already holds them
            same = [t for t in fitting if t.index not in taken and _holds(t.module, arrays)]
            if len(flax_group) > 1 and len(same) == 1:
                pairs.append(Pair(call, same[0], rule, arrays))
                taken.add(same[0].index)
            else:
                waiting.append((call, rule, arrays))
        free = [t for t in fitting if t.index not in taken]
        for (call, rule, arrays), t in zip(waiting, free, strict=False):  # then call order
            pairs.append(Pair(call, t, rule, arrays))
            taken.add(t.index)
        unmatched += [call for call, _, _ in waiting[len(free) :]]
    pairs += _composites(flax_calls, torch_calls, pairs)
    pairs.sort(key=lambda p: p.flax.index)
    paired_torch = {p.torch.index for p in pairs if p.rule is not None}
    leftover = [
        c
        for c in candidates
        if c.index not in paired_torch and not _covered(c, torch_calls, paired_torch) and _own_tensors(c.module)
    ]
    return Matching(pairs, sorted(unmatched, key=lambda c: c.index), leftover)


def is_tree_pair(
    model: Any, variables: Any, port: torch.nn.Module, inputs: Any, torch_inputs: Any, mapping: Any
) -> bool:
    """Whether a pair is checked and loaded as call trees rather than chain positions: a port that is not an
    ``nn.Sequential``, a model that is not one chain, several inputs (a tuple or a dict), or options only
    trees take (``torch_inputs``, ``mapping``). An NNX model is a chain when it is an ``nnx.Sequential``
    against an ``nn.Sequential`` port (as before), a tree otherwise."""
    if not isinstance(port, torch.nn.Sequential) or torch_inputs is not None or mapping is not None:
        return True
    if isinstance(inputs, tuple | Mapping):  # several arguments (a list is one array, as NumPy reads it)
        return True
    if is_nnx(model):
        return not isinstance(model, nnx.Sequential)
    try:
        discover_chain(model, variables)
    except UnsupportedModelError:
        return True
    return False


def find_input_permutations(pairs: Sequence[Pair]) -> None:
    """For each matched Linear-like leaf whose torch input holds the Flax input's features in another
    order, the channels-first flatten permutation that explains it (``pair.input_permutation``): tried for
    every factorisation ``(C, H*W)`` of the width and kept when the recorded values confirm it."""
    from ._convert import channels_first_flatten_permutation

    for pair in pairs:
        if pair.rule is None or not pair.flax.args or not pair.torch.args:
            continue
        flax_in, torch_in = pair.flax.args[0], pair.torch.args[0]
        if not isinstance(torch_in, torch.Tensor) or not hasattr(flax_in, "shape"):
            continue
        x_f = np.asarray(flax_in, np.float64)
        x_t = torch_in.detach().double().numpy()
        if x_f.ndim != 2 or x_f.shape != x_t.shape or x_f.shape[1] < 4 or not np.isfinite(x_f).all():
            continue
        scale = 1e-3 * (np.abs(x_f).max() or 1.0)
        if np.abs(x_t - x_f).max() <= scale:
            continue  # same order
        width = x_f.shape[1]
        for channels in range(2, width // 2 + 1):
            if width % channels:
                continue
            permutation = channels_first_flatten_permutation(channels, width // channels)
            if np.abs(x_t[:, permutation] - x_f).max() <= scale:
                pair.input_permutation = permutation
                break


def _holds(module: torch.nn.Module, arrays: Mapping[str, np.ndarray]) -> bool:
    """Whether the module's tensors hold exactly these values under these names."""
    tensors = port_tensors(module)
    return all(
        name in tensors and tuple(tensors[name].shape) == array.shape and np.array_equal(to_numpy(tensors[name]), array)
        for name, array in arrays.items()
    )


def _rule(call: Call) -> LayerRule | None:
    return rule_or_none(call.module)


def _flax_leaves(flax_calls: Sequence[Call], among: Sequence[Call] | None = None) -> list[Call]:
    """Calls (of ``among``, default all) of modules with a rule and variables, outermost first: a
    rule-backed composite hides its children."""
    leaves: list[Call] = []
    hidden: set[int] = set()
    for call in flax_calls if among is None else among:
        if call.index in hidden:
            continue
        if _rule(call) is not None and call.variables.get("params"):
            leaves.append(call)
            hidden |= descendants(call, flax_calls)
    return leaves


def _expand(leaves: list[Call], flax_calls: Sequence[Call], candidates: Sequence[Call]) -> list[Call]:
    """Replace a rule-backed composite (attention) by its rule-backed children when no torch call fits it."""
    result: list[Call] = []
    for call in leaves:
        rule = _rule(call)
        assert rule is not None
        if not call.children:
            result.append(call)
            continue
        sig = signature(rule.torch_arrays(call.module, call.variables))
        if any(torch_signature(t.module, rule) == sig and rule.accepts_torch(t.module) for t in candidates):
            result.append(call)
            continue
        children = [flax_calls[i] for i in sorted(descendants(call, flax_calls))]
        result += _flax_leaves(flax_calls, children) or [call]
    return result


def descendants(call: Call, calls: Sequence[Call]) -> set[int]:
    """The indices of every call made inside ``call``."""
    found: set[int] = set()
    stack = list(call.children)
    while stack:
        index = stack.pop()
        found.add(index)
        stack += calls[index].children
    return found


def _innermost(fitting: list[Call], torch_calls: Sequence[Call]) -> list[Call]:
    """Drop wrappers: a call whose descendant call fits the same signature is not the layer itself."""
    indices = {c.index for c in fitting}
    return [c for c in fitting if not (descendants(c, torch_calls) & indices)]


def _composites(flax_calls: Sequence[Call], torch_calls: Sequence[Call], leaves: list[Pair]) -> list[Pair]:
    """Each Flax call that contains matched leaves (and is not one) with the torch call that is the lowest
    common ancestor of their partners; the model's own call pairs with the port's."""
    partner = {p.flax.index: p.torch.index for p in leaves}
    result: list[Pair] = []
    for call in flax_calls:
        if call.index in partner:
            continue
        inside = [partner[i] for i in descendants(call, flax_calls) if i in partner]
        if call.parent is None:
            result.append(Pair(call, torch_calls[0], None))
        elif inside:
            result.append(Pair(call, torch_calls[_common_ancestor(inside, torch_calls)], None))
    return result


def _common_ancestor(indices: list[int], calls: Sequence[Call]) -> int:
    def chain(index: int) -> list[int]:
        path = [index]
        while calls[path[-1]].parent is not None:
            path.append(calls[path[-1]].parent)  # type: ignore[arg-type]
        return path[::-1]

    paths = [chain(i) for i in indices]
    common = 0
    for level in zip(*paths, strict=False):
        if len(set(level)) != 1:
            break
        common = level[0]
    return common


def _covered(call: Call, torch_calls: Sequence[Call], paired: set[int]) -> bool:
    """Whether a paired call lies inside ``call`` or ``call`` inside a paired leaf (its tensors are accounted for)."""
    if descendants(call, torch_calls) & paired:
        return True
    parent = call.parent
    while parent is not None:
        if parent in paired:
            return True
        parent = torch_calls[parent].parent
    return False


def _own_tensors(module: torch.nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
