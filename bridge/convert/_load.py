"""``load_into``: the Flax variables moved into the torch tensors the matching pairs them with, strictly (every
port parameter and buffer filled from exactly one Flax variable), one way for every pair. Only how the pairs
are found differs: a chain against an ``nn.Sequential`` by position, without running either side (the fast
path); any other pair by running both once and matching their call trees."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .. import _flax_model as flax_model
from .._arguments import torch_arguments
from .._errors import InvalidArgumentError, LayerMismatchError, ReassignedWarning, TiedWeightsWarning
from .._tensors import is_float, to_numpy, to_tensor, torch_dtype
from .._validate import require_mapping, require_port, require_variables
from ..capture import (
    Call,
    Step,
    Variables,
    capture_flax,
    capture_torch,
    chain_calls,
    chain_or_none,
    drawn_rows,
    keyed_like,
    output_leaves,
    pair_arguments,
    torch_positions,
)
from ..match import (
    NO_LOOSE,
    LoosePair,
    LooseVariables,
    Matching,
    Pair,
    chain_steps,
    describe_ties,
    find_input_permutations,
    match_calls,
    match_loose,
    port_tensors,
    signature,
    tensor_holders,
    tied_variables,
    unaccounted_tensors,
    unpaired_flax,
)
from ._convert import check_variable_names, flatten_permutations, plan


def load_into(
    model: Any,
    variables: Variables | None = None,
    torch_module: torch.nn.Module | None = None,
    *,
    inputs: Any = None,
    torch_inputs: Any = None,
    channels_last: bool = True,
    mapping: Mapping[str, str] | None = None,
) -> torch.nn.Module:
    """Copy ``model``'s variables into an existing torch port, after checking that every one fits.

    The pairs of Flax layers and port modules are found first. A chain (an ``nn.Sequential`` model, or
    one returning one, or an ``nnx.Sequential``) against a ``torch.nn.Sequential`` pairs position i with
    child i, without running anything. Any other pair (a model that is not one chain, a port that is not
    an ``nn.Sequential``, or with ``mapping``/``torch_inputs``) is paired by structure: both models run
    once on ``inputs``, and their calls are matched as ``check_equivalence`` matches them. Then, the same
    way for both: each Flax variable is found in the module its pair gives (``bridge.match._match``: the
    rule's torch module itself, a wrapper around it, ``0.inner.weight``, or a module of its own whose
    tensors are matched by shape, ``w``, ``b``); variables outside rule-backed layers are paired with
    the port tensors of their shape; every port parameter and buffer must be filled from exactly one Flax
    variable (tied tensors must get equal values). Nothing is copied unless everything fits, so a failed
    call leaves ``torch_module`` as it was. A stock ``torch.nn.Conv2d`` takes a Conv's kernel as
    ``(out, in, kh, kw)``; the Linear after a ``torch.flatten`` of NCHW gets its columns permuted. An NNX
    model is filled the same way, by attribute paths. An output Linear tied to an embedding
    (``nn.Embed.attend``) is filled whether it shares or copies the embedding weight, with a
    ``TiedWeightsWarning`` that says which.

    Arguments:
        model, variables, torch_module: in the order of every other function (``check_equivalence``,
            ``to_torch``); the order before 0.2, ``load_into(torch_module, model, variables)``, still works
            with a ``DeprecationWarning`` for one release.
        inputs, torch_inputs, mapping: as in ``check_equivalence`` (needed for trees only; a chain model
            against another kind of port is run on two rows drawn for its first layer).
        channels_last: False for a channels-first port: when its flatten is ``nn.Flatten`` of
            ``(N, C, H, W)`` (torch's order), the Linear after it gets the Dense kernel's rows permuted into
            that order (``K.reshape(H*W, C, out).transpose(1, 0, 2).reshape(-1, out).T``): found by probing
            a chain's flatten, from the recorded values in a tree.

    Returns:
        ``torch_module`` itself, loaded.

    Warns:
        TiedWeightsWarning: naming each Flax variable that fills several port tensors (tied embeddings),
            and whether the port shares one tensor or holds copies.
        ReassignedWarning: where same-shape layers fed one input were paired against call order because
            only that assignment reproduces the Flax output.

    Raises:
        InvalidArgumentError: for a tree without ``inputs``, or a port whose tensors are on the meta device.
        LayerMismatchError: listing every Flax layer with no counterpart, every port module of another layer
            kind, every port tensor left over, and every shape or dtype that differs; nothing is copied then.
    """
    if isinstance(model, torch.nn.Module):  # the order before 0.2: (torch_module, model, variables)
        warnings.warn(
            "load_into(torch_module, model, variables) is deprecated: call load_into(model, variables, "
            "torch_module), the order of check_equivalence and to_torch",
            DeprecationWarning,
            stacklevel=2,
        )
        model, variables, torch_module = variables, torch_module, model  # type: ignore[assignment]
    require_port(torch_module, "torch_module")
    assert isinstance(torch_module, torch.nn.Module)  # require_port refused anything else
    require_variables(variables)
    require_mapping(mapping)
    _require_materialised(torch_module)
    port = torch_module
    steps = chain_steps(model, variables, port, None, torch_inputs, mapping)
    if steps is not None:
        assert isinstance(port, torch.nn.Sequential)  # chain_steps pairs chains with Sequentials only
        matching, structure = _chain_matching(model, variables, steps, port, channels_last)
        flax_calls = [*(p.flax for p in matching.pairs), *matching.unmatched_flax]
        torch_calls = [*(p.torch for p in matching.pairs), *matching.unmatched_torch]
        run = None
    else:
        if inputs is None and (model_steps := chain_or_none(model, variables)) is not None:
            inputs = drawn_rows(model_steps, 0, 2)  # a chain model against another kind of port: two rows
        flax_out, flax_calls, torch_args, torch_kwargs, torch_calls, matching = _tree_matching(
            model, variables, port, inputs, torch_inputs, channels_last, mapping
        )
        structure = None
        run = (flax_out, (torch_args, torch_kwargs))
    loose = (
        NO_LOOSE
        if steps is not None
        else match_loose(matching, flax_model.all_variables(model, variables), port, by_value=False)
    )
    copies = _planned_copies(matching, loose, flax_calls, structure)
    _copy(copies)
    loose = _settle_layouts(loose, flax_calls, torch_calls)
    ties = describe_ties(tied_variables(matching.pairs))
    if ties:
        warnings.warn(
            "load_into filled tied weights from one Flax variable each: " + "; ".join(ties),
            TiedWeightsWarning,
            stacklevel=2,
        )
    if run is not None:  # a tree: the orders only the loaded port's values tell
        flax_out, torch_call = run
        _permute_flattened_inputs(port, torch_call, matching, loose, flax_calls)
        _reconcile(port, flax_out, torch_call, matching, loose, flax_calls)
    return port


def _chain_matching(
    model: Any, variables: Variables | None, steps: tuple[Step, ...], port: torch.nn.Sequential, channels_last: bool
) -> tuple[Matching, str | None]:
    """A chain's positions paired with the port's children (``match_calls``'s fast path), nothing run: the rules
    lay out each position's variables, a probe of a channels-first port's flatten gives the permutation of the
    Linear after it. Also the structure problem where the lengths differ (None when they agree)."""
    planned = plan(model, variables, steps)  # every position has a rule (else UnknownLayerError, naming it)
    for step, rule in planned:
        check_variable_names(step, rule.param_maps(step.layer, step.variables))
    flax_calls, torch_calls = chain_calls(steps), torch_positions(port)  # nothing run
    permutations = {} if channels_last or len(port) != len(steps) else flatten_permutations(planned, port)
    matching = match_calls(flax_calls, torch_calls, by_position=True)
    for pair in matching.pairs:
        pair.input_permutation = permutations.get(pair.flax.index)
    return matching, None if matching.structure is None else matching.structure[1]


def _tree_matching(
    model: Any,
    variables: Variables | None,
    port: torch.nn.Module,
    inputs: Any,
    torch_inputs: Any,
    channels_last: bool,
    mapping: Mapping[str, str] | None,
) -> tuple[Any, list[Call], tuple[Any, ...], dict[str, Any], list[Call], Matching]:
    """Both models run once on ``inputs``, their calls matched by structure (``match_calls``):
    ``(Flax output, Flax calls, the port's positional and keyword arguments, its calls, matching)``."""
    args, kwargs, torch_args, torch_kwargs, _ = pair_arguments(model, port, inputs, torch_inputs, channels_last)
    flax_out, flax_calls = capture_flax(model, variables if variables is not None else {}, args, kwargs)
    with torch.no_grad():
        _, torch_calls = capture_torch(port, torch_args, torch_kwargs)
    return flax_out, flax_calls, torch_args, torch_kwargs, torch_calls, match_calls(flax_calls, torch_calls, mapping)


def _permute_flattened_inputs(
    port: torch.nn.Module,
    torch_call: tuple[tuple[Any, ...], dict[str, Any]],
    matching: Matching,
    loose: LooseVariables,
    flax_calls: list[Call],
) -> None:
    """A Linear after ``torch.flatten`` of NCHW reads its input features in torch's order: found from the
    loaded port's recorded inputs (``find_input_permutations``) and loaded again with its columns in that
    order, until no further layer needs it (each permuted layer changes what the next one is fed)."""
    for _ in range(len(matching.pairs)):
        with torch.no_grad():
            _, torch_calls = capture_torch(port, *torch_call)
        rerun = [p for p in matching.pairs if p.rule is not None and p.input_permutation is None]
        for pair in rerun:
            pair.torch = torch_calls[pair.torch.index]
        find_input_permutations(rerun)
        if not any(p.input_permutation is not None for p in rerun):
            break
        _copy(_planned_copies(matching, loose, flax_calls, None))


def _planned_copies(
    matching: Matching, loose: LooseVariables, flax_calls: list[Call], structure: str | None
) -> list[tuple[torch.Tensor, np.ndarray]]:
    """Every (port tensor, Flax array laid out for torch) to copy, after checking all of them: the matched
    layers' tensors (a Linear's columns in the order of its ``input_permutation``), then the variables outside
    them (``match_loose``); every Flax variable must reach one port tensor and every port tensor must be
    filled, else nothing is copied and each is named. A ``structure`` problem (a chain and a Sequential of
    other lengths) is raised alone: the positions after it are not counterparts."""
    if structure is not None:
        raise LayerMismatchError(f"cannot load into the torch module: {structure}")
    problems = [unpaired_flax(c, flax_calls) for c in matching.unmatched_flax]
    copies: list[tuple[torch.Tensor, np.ndarray]] = []
    filled: dict[int, tuple[str, np.ndarray]] = {}
    for pair in matching.pairs:
        if pair.rule is None:
            continue
        where = f"Flax {pair.flax.name or pair.flax.kind} -> torch {pair.torch.name or '(port)'}"
        if not pair.rule.accepts_torch(pair.torch.module):  # a module of another registered layer kind
            expected = " or ".join(t.__name__ for t in pair.rule.torch_types)
            problems.append(f"{where}: expected torch {expected}, found {pair.torch.kind}")
            continue
        tensors = port_tensors(pair.torch.module)
        constants = pair.rule.torch_constants(pair.flax.module, pair.flax.variables)
        holders = tensor_holders(
            pair.rule,
            pair.flax.module,
            pair.flax.variables,
            pair.torch.module,
            pair.arrays,
            by_value=False,
            tensors=tensors,
        )
        for name, array in _in_input_order(pair).items():
            _, tensor = holders.get(name, ("", None))
            if tensor is None:
                problems.append(f"{where}: torch has no {name} (its tensors: {', '.join(sorted(tensors))})")
            elif tuple(tensor.shape) != array.shape:
                problems.append(f"{where}: {name} has shape {tuple(tensor.shape)} in torch, Flax gives {array.shape}")
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
        held_names = [name for name, _ in holders.values()]
        left = unaccounted_tensors(pair.rule, pair.flax.module, pair.flax.variables, tensors, held_names)
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


def _in_input_order(pair: Pair) -> dict[str, np.ndarray]:
    """The pair's arrays, a Linear's columns moved to where its port reads each Flax feature
    (``pair.input_permutation``: Flax feature j is torch column ``permutation[j]``)."""
    permutation = pair.input_permutation
    if permutation is None:
        return pair.arrays
    arrays = {}
    for name, array in pair.arrays.items():
        if array.ndim == 2 and array.shape[1] == len(permutation):
            reordered = np.empty_like(array)
            reordered[:, permutation] = array
            array = reordered
        arrays[name] = array
    return arrays


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
        _copy(_planned_copies(matching, loose, flax_calls, None))
    if _reproduces(port, flax_out, torch_inputs):
        return
    with torch.no_grad():
        _, torch_calls = capture_torch(port, *torch_inputs)
    for group in _fed_alike(guessed, torch_calls):
        partners = [p.torch for p in group]
        for order in itertools.islice(itertools.permutations(partners), 1, _MAX_PERMUTATIONS):
            for pair, partner in zip(group, order, strict=True):
                pair.torch = partner
            _copy(_planned_copies(matching, loose, flax_calls, None))
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
        _copy(_planned_copies(matching, loose, flax_calls, None))


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


def _require_materialised(port: torch.nn.Module) -> None:
    """A port with tensors on the meta device has no storage to load into: refused, never 'loaded' in silence."""
    meta = next((name for name, t in [*port.named_parameters(), *port.named_buffers()] if t.is_meta), None)
    if meta is not None:
        raise InvalidArgumentError(
            f"torch_module has tensors on the meta device ({meta}): they hold no values to load into; build it "
            "on a device (or call torch_module.to_empty(device='cpu')) first"
        )


def _copy(copies: list[tuple[torch.Tensor, np.ndarray]]) -> None:
    with torch.no_grad():
        for tensor, array in copies:
            tensor.copy_(to_tensor(array).to(tensor.dtype))
