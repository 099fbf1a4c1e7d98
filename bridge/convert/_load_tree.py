"""``load_into`` for any port: the Flax variables moved into the torch tensors that the structural matching
pairs them with, strictly (every port parameter and buffer filled from exactly one Flax variable)."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .._arguments import call_arguments, torch_arguments
from .._errors import InvalidArgumentError, LayerMismatchError, ReassignedWarning, TiedWeightsWarning
from .._tensors import is_float, to_numpy, to_tensor, torch_dtype
from ..capture import Call, capture_flax, capture_torch, keyed_like, output_leaves
from ..match import (
    LoosePair,
    LooseVariables,
    Matching,
    Pair,
    describe_ties,
    find_input_permutations,
    match_calls,
    match_loose,
    port_tensors,
    signature,
    tensor_holders,
    tied_variables,
    unpaired_flax,
)


def load_tree(
    port: torch.nn.Module,
    model: Any,
    variables: Mapping[str, Any],
    inputs: Any,
    *,
    torch_inputs: Any = None,
    channels_last: bool = True,
    mapping: Mapping[str, str] | None = None,
) -> torch.nn.Module:
    """Fill ``port`` from ``model``'s variables through the call-tree matching (see ``bridge.load_into``).

    Warns:
        TiedWeightsWarning: naming each Flax variable that fills several port tensors (tied embeddings),
            and whether the port shares one tensor or holds copies.

    Raises:
        InvalidArgumentError: without ``inputs`` (both models are run once to see their calls).
        LayerMismatchError: listing every Flax layer with no counterpart, every port tensor left over, and
            every shape or dtype that differs; nothing is copied then.
    """
    if inputs is None:
        raise InvalidArgumentError(
            f"{type(model).__name__} is not one nn.Sequential chain: pass inputs= (example inputs for its apply) "
            "so that both models can be run once and their calls matched"
        )
    args, kwargs = call_arguments(inputs)
    torch_args, torch_kwargs = (
        torch_arguments(args, kwargs, channels_last)
        if torch_inputs is None
        else torch_arguments(*call_arguments(torch_inputs), True)
    )
    flax_out, flax_calls = capture_flax(model, variables, args, kwargs)
    with torch.no_grad():
        _, torch_calls = capture_torch(port, torch_args, torch_kwargs)
    matching = match_calls(flax_calls, torch_calls, mapping)
    loose = match_loose(matching, variables, port, by_value=False)
    copies = _planned_copies(matching, loose, flax_calls)
    _copy(copies)
    loose = _settle_layouts(loose, flax_calls, torch_calls)
    ties = describe_ties(tied_variables(matching.pairs))
    if ties:
        warnings.warn(
            "load_into filled tied weights from one Flax variable each: " + "; ".join(ties),
            TiedWeightsWarning,
            stacklevel=3,
        )
    for _ in range(len(matching.pairs)):  # a Linear after torch.flatten of NCHW: its columns in torch's order
        with torch.no_grad():
            _, torch_calls = capture_torch(port, torch_args, torch_kwargs)
        rerun = [p for p in matching.pairs if p.rule is not None and p.input_permutation is None]
        for pair in rerun:
            pair.torch = torch_calls[pair.torch.index]
        find_input_permutations(rerun)
        permuted = [p for p in rerun if p.input_permutation is not None]
        if not permuted:
            break
        for pair in permuted:
            assert pair.rule is not None
            holders = tensor_holders(
                pair.rule, pair.flax.module, pair.flax.variables, pair.torch.module, pair.arrays, by_value=True
            )
            for name, array in pair.arrays.items():
                if array.ndim == 2 and array.shape[1] == len(pair.input_permutation):  # type: ignore[arg-type]
                    reordered = np.empty_like(array)
                    reordered[:, pair.input_permutation] = array
                    _copy([(holders[name][1], reordered)])
    _reconcile(port, flax_out, (torch_args, torch_kwargs), matching, loose, flax_calls)
    return port


def _planned_copies(
    matching: Matching, loose: LooseVariables, flax_calls: list[Call]
) -> list[tuple[torch.Tensor, np.ndarray]]:
    """Every (port tensor, Flax array laid out for torch) to copy, after checking all of them: the matched
    layers' tensors, then the variables outside them (``match_loose``); every Flax variable must reach one
    port tensor and every port tensor must be filled, else nothing is copied and each is named."""
    problems = [unpaired_flax(c, flax_calls) for c in matching.unmatched_flax]
    copies: list[tuple[torch.Tensor, np.ndarray]] = []
    filled: dict[int, tuple[str, np.ndarray]] = {}
    for pair in matching.pairs:
        if pair.rule is None:
            continue
        tensors = port_tensors(pair.torch.module)
        constants = pair.rule.torch_constants(pair.flax.module, pair.flax.variables)
        where = f"Flax {pair.flax.name} -> torch {pair.torch.name}"
        holders = tensor_holders(
            pair.rule, pair.flax.module, pair.flax.variables, pair.torch.module, pair.arrays, by_value=False
        )
        for name, array in pair.arrays.items():
            _, tensor = holders.get(name, ("", None))
            if tensor is None:
                problems.append(f"{where}: torch has no {name} (its tensors: {', '.join(sorted(tensors))})")
            elif tuple(tensor.shape) != array.shape:
                problems.append(f"{where}: {name} is {tuple(tensor.shape)} in torch, Flax gives {array.shape}")
            elif tensor.dtype != torch_dtype(array.dtype):
                problems.append(
                    f"{where}: {name} is {tensor.dtype} in torch, Flax gives {array.dtype}; cast one side explicitly"
                )
            elif id(tensor) in filled and not np.array_equal(filled[id(tensor)][1], array):
                problems.append(
                    f"{where}: {name} is shared (tied) in torch with {filled[id(tensor)][0]}, but Flax holds "
                    "different values for them: untie it in the port"
                )
            else:
                filled[id(tensor)] = (f"{pair.flax.name}", array)
                copies.append((tensor, array))
        left = [
            n
            for n in tensors
            if n not in {held for held, _ in holders.values()}
            and n.rsplit(".", 1)[-1] not in (*pair.rule.torch_only_keys, *constants)
        ]
        if left:
            problems.append(f"{where}: torch tensors no Flax variable fills: {', '.join(sorted(left))}")
        for name, value in constants.items():
            if name in tensors:
                copies.append((tensors[name], np.full(tuple(tensors[name].shape), value, np.float32)))
    for held in loose.pairs:
        if held.tensor.dtype != torch_dtype(held.array.dtype) and not (
            held.tensor.dtype.is_floating_point and held.array.dtype.kind == "f"
        ):
            problems.append(f"Flax {held.flax_path} is {held.array.dtype}, torch {held.torch_name} {held.tensor.dtype}")
        else:
            copies.append((held.tensor, held.laid_out))
    problems += [
        f"Flax variable {path} (outside any layer with a rule) has no port tensor of its shape that only it "
        "could fill: pair its module with mapping=, or load it by hand"
        for path in loose.unfilled_flax
    ]
    unfilled: dict[str, list[str]] = {}  # by module: every port tensor no matched layer or loose variable fills
    for name in loose.unfilled_torch:
        owner, _, leaf = name.rpartition(".")
        unfilled.setdefault(owner, []).append(leaf)
    problems += [
        f"torch {owner or '(port)'} holds tensors no Flax variable fills: {', '.join(leaves)}"
        for owner, leaves in unfilled.items()
    ]
    if problems:
        raise LayerMismatchError("cannot load into the torch module: " + "; ".join(problems))
    return copies


def _settle_layouts(loose: LooseVariables, flax_calls: list[Call], torch_calls: list[Call]) -> LooseVariables:
    """Each square 2-D loose variable laid out as its torch module computes its Flax module's output: both
    layouts tried on the Flax call's recorded input (Conv1D's (in, out) against Flax's (out, in)); the
    variable stays as it is where no module of either side was called alone or neither layout reproduces it."""
    flax_by_name = {c.name: c for c in reversed(flax_calls)}  # the first call of each module
    torch_by_name = {c.name: c for c in reversed(torch_calls)}
    settled = []
    for pair in loose.pairs:
        if not pair.settled:
            flax_call, torch_call = flax_by_name.get(pair.flax_module), torch_by_name.get(pair.torch_module)
            pair = replace(pair, settled=True)
            if flax_call is not None and torch_call is not None:
                pair = _by_output(pair, flax_call, torch_call)
            _copy([(pair.tensor, pair.laid_out)])  # the layout kept, whichever was tried last
        settled.append(pair)
    return replace(loose, pairs=tuple(settled))


def _by_output(pair: LoosePair, flax_call: Call, torch_call: Call) -> LoosePair:
    """The layout of ``pair`` under which the torch module, fed the Flax call's inputs, gives its output."""
    flax_out = [a for a in output_leaves(flax_call.output) if is_float(a.dtype)]
    args, kwargs = torch_arguments(flax_call.args, flax_call.kwargs, True)
    for transposed in (False, True):
        candidate = replace(pair, transposed=transposed)
        _copy([(pair.tensor, candidate.laid_out)])
        try:
            with torch.no_grad():
                out = [a for a in output_leaves(torch_call.module(*args, **kwargs)) if is_float(a.dtype)]
        except Exception:  # the module takes other arguments: undecided
            return pair
        if (
            flax_out
            and len(out) == len(flax_out)
            and all(o.shape == f.shape and _close(f, o) for f, o in zip(flax_out, out, strict=True))
        ):
            return candidate
    return pair


def _reconcile(
    port: torch.nn.Module,
    flax_out: Any,
    torch_inputs: tuple[tuple[Any, ...], dict[str, Any]],
    matching: Matching,
    loose: LooseVariables,
    flax_calls: list[Call],
) -> None:
    """Re-pair the same-shape layers that only call order told apart (``Pair.by_order``: a fresh port holds no
    values to tell them by) by what the loaded port computes, reloading after each change. First by inputs:
    a layer whose torch call is fed another input than its Flax call, while another torch call of its group
    is fed exactly that, takes that one (the shortcut's BatchNorm and the block's, called in another order).
    Then, for layers fed the same input (query and key), the assignment among them that makes the port
    reproduce the Flax output, if call order does not. A port that reproduces it under no assignment (a port
    with a mistake of its own) keeps call order: the check then says where it differs."""
    guessed = [p for p in matching.pairs if p.by_order]
    if not guessed:
        return
    for _ in range(len(guessed)):
        with torch.no_grad():
            _, torch_calls = capture_torch(port, *torch_inputs)
        if not _repair_by_inputs(guessed, torch_calls):
            break
        _copy(_planned_copies(matching, loose, flax_calls))
    if _reproduces(port, flax_out, torch_inputs):
        return
    with torch.no_grad():
        _, torch_calls = capture_torch(port, *torch_inputs)
    for group in _fed_alike(guessed, torch_calls):
        partners = [p.torch for p in group]
        for order in itertools.islice(itertools.permutations(partners), 1, _MAX_PERMUTATIONS):
            for pair, partner in zip(group, order, strict=True):
                pair.torch = partner
            _copy(_planned_copies(matching, loose, flax_calls))
            if _reproduces(port, flax_out, torch_inputs):
                moved = "; ".join(f"Flax {p.flax.name} -> torch {p.torch.name}" for p in group)
                warnings.warn(
                    f"load_into paired {moved}: layers fed one input, in the only assignment under which the port "
                    "computes the Flax output (call order gave another). If the port's names say otherwise, its "
                    "forward uses them swapped: pass mapping= to load by your names",
                    ReassignedWarning,
                    stacklevel=3,
                )
                return
        for pair, partner in zip(group, partners, strict=True):  # none reproduces it: call order, as it was
            pair.torch = partner
        _copy(_planned_copies(matching, loose, flax_calls))


# Assignments tried among layers fed the same input (4 layers: every one).
_MAX_PERMUTATIONS = 24


def _groups(pairs: list[Pair]) -> list[list[Pair]]:
    """Pairs by rule and signature: the layers that could take each other's place."""
    found: dict[tuple[int, Any], list[Pair]] = {}
    for pair in pairs:
        found.setdefault((id(pair.rule), signature(pair.arrays)), []).append(pair)
    return [group for group in found.values() if len(group) > 1]


def _repair_by_inputs(guessed: list[Pair], torch_calls: list[Call]) -> bool:
    """Give each guessed pair whose torch call is fed another input the partner of its group fed its Flax
    input (swapping the two), where that partner's own pair is not fed it too; whether anything changed."""
    changed = False
    for group in _groups(guessed):
        for pair in group:
            mine = torch_calls[pair.torch.index]
            if _same_input(pair.flax, mine):
                continue
            for other in group:
                theirs = torch_calls[other.torch.index]
                if other is pair or not _same_input(pair.flax, theirs) or _same_input(other.flax, theirs):
                    continue
                pair.torch, other.torch = other.torch, pair.torch
                changed = True
                break
    return changed


def _fed_alike(guessed: list[Pair], torch_calls: list[Call]) -> list[list[Pair]]:
    """Within each group, the guessed pairs whose torch calls are fed one same input (query, key and value)."""
    subsets = []
    for group in _groups(guessed):
        left = list(group)
        while left:
            first = left.pop(0)
            alike = [first] + [
                p for p in left if _same_input(torch_calls[first.torch.index], torch_calls[p.torch.index])
            ]
            left = [p for p in left if p not in alike]
            if len(alike) > 1 and math.factorial(len(alike)) <= _MAX_PERMUTATIONS:
                subsets.append(alike)
    return subsets


def _same_input(a: Call, b: Call) -> bool:
    """Whether two calls (Flax or torch) were fed the same first input, up to rounding (and channels-first)."""
    x, y = (next((np.asarray(to_numpy(v) if isinstance(v, torch.Tensor) else v) for v in c.args), None) for c in (a, b))
    if x is None or y is None or not (is_float(x.dtype) and is_float(y.dtype)):
        return False
    if x.shape != y.shape and y.ndim >= 3 and np.moveaxis(y, 1, -1).shape == x.shape:
        y = np.moveaxis(y, 1, -1)
    return x.shape == y.shape and _close(x, y)


def _close(x: np.ndarray, y: np.ndarray) -> bool:
    """Equal far below the size of the values (what rounding leaves), not merely of one shape."""
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = float(np.nanmax(np.abs(x64), initial=0.0)) or 1.0
    loose = 5e-2 if min(np.dtype(x.dtype).itemsize, np.dtype(y.dtype).itemsize) <= 2 else 1e-3
    return bool(np.nanmax(np.abs(x64 - y64), initial=0.0) <= loose * scale)


def _reproduces(port: torch.nn.Module, flax_out: Any, torch_inputs: tuple[tuple[Any, ...], dict[str, Any]]) -> bool:
    """Whether the loaded port's output equals the Flax one up to rounding (True where they cannot be compared:
    nothing to learn from them)."""
    try:
        with torch.no_grad():
            torch_out = port(*torch_inputs[0], **torch_inputs[1])
    except Exception:  # the port's own failure is the check's to report
        return True
    flax_leaves = [a for a in output_leaves(flax_out) if is_float(a.dtype)]
    torch_leaves = [a for a in output_leaves(keyed_like(torch_out, flax_out)) if is_float(a.dtype)]
    if len(flax_leaves) != len(torch_leaves):
        return True
    if any(f.size != t.size for f, t in zip(flax_leaves, torch_leaves, strict=True)):
        return True
    return all(_close(f, t.reshape(f.shape)) for f, t in zip(flax_leaves, torch_leaves, strict=True))


def _copy(copies: list[tuple[torch.Tensor, np.ndarray]]) -> None:
    with torch.no_grad():
        for tensor, array in copies:
            tensor.copy_(to_tensor(array).to(tensor.dtype))
