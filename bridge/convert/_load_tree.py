"""``load_into`` for any port: the Flax variables moved into the torch tensors that the structural matching
pairs them with, strictly (every port parameter and buffer filled from exactly one Flax variable)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .._arguments import call_arguments, torch_arguments
from .._errors import InvalidArgumentError, LayerMismatchError, TiedWeightsWarning
from .._tensors import to_tensor, torch_dtype
from ..capture._capture_tree import capture_flax, capture_torch
from ..match._match import port_tensors, tensor_holders
from ..match._match_tree import Matching, describe_ties, find_input_permutations, match_calls, tied_variables


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
    _, flax_calls = capture_flax(model, variables, args, kwargs)
    with torch.no_grad():
        _, torch_calls = capture_torch(port, torch_args, torch_kwargs)
    matching = match_calls(flax_calls, torch_calls, mapping)
    copies = _planned_copies(matching)
    _copy(copies)
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
    return port


def _planned_copies(matching: Matching) -> list[tuple[torch.Tensor, np.ndarray]]:
    """Every (port tensor, Flax array laid out for torch) to copy, after checking all of them."""
    problems = [
        f"Flax {c.name} ({c.kind}) has no torch counterpart holding tensors of the same shapes"
        for c in matching.unmatched_flax
    ]
    problems += [
        f"torch {c.name} ({c.kind}) holds tensors no Flax layer fills: "
        + ", ".join(f"{n} {tuple(t.shape)}" for n, t in port_tensors(c.module).items())
        for c in matching.unmatched_torch
    ]
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
    if problems:
        raise LayerMismatchError("cannot load into the torch module: " + "; ".join(problems))
    return copies


def _copy(copies: list[tuple[torch.Tensor, np.ndarray]]) -> None:
    with torch.no_grad():
        for tensor, array in copies:
            tensor.copy_(to_tensor(array).to(tensor.dtype))
