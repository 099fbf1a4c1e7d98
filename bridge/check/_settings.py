"""The settings of an equivalence report, one set of keys for chains and trees: how the check ran, what it
left out, and which port tensors nothing compares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._tensors import is_float
from ..capture import Call
from ..match import (
    LooseVariables,
    Pair,
    describe_ties,
    port_tensors,
    tensor_holders,
    tied_variables,
    unaccounted_tensors,
)
from ._gradients import JudgedGradients
from ._outputs import output_leaves


def unfilled_port_tensors(
    port: torch.nn.Module, pairs: Sequence[Pair], loose: LooseVariables
) -> tuple[list[str], list[str]]:
    """``(parameters, buffers)`` of the port, by qualified name, that no Flax variable fills, so that nothing
    compares them: those outside every matched layer (``loose.unfilled_torch``) and those inside a matched
    layer's module beyond what its rule accounts for (a port's module of its own with an extra tensor)."""
    inside: list[str] = []
    for pair in pairs:
        if pair.rule is None:
            continue
        flax, module = pair.flax, pair.torch.module
        tensors = port_tensors(module)
        holders = tensor_holders(
            pair.rule, flax.module, flax.variables, module, pair.arrays, by_value=True, tensors=tensors
        )
        held = [name for name, _ in holders.values()]
        inside += [
            ".".join(part for part in (pair.torch.name, name) if part)
            for name in unaccounted_tensors(pair.rule, flax.module, flax.variables, tensors, held)
        ]
    names = list(dict.fromkeys([*loose.unfilled_torch, *inside]))  # a module paired twice is listed once
    parameters = {name for name, _ in port.named_parameters()}
    return [n for n in names if n in parameters], [n for n in names if n not in parameters]


def nonfinite_outputs(flax_out: Any, torch_out: Any) -> dict[str, int]:
    """How many elements of each side's floating outputs are NaN or Inf."""
    return {
        side: sum(
            int(np.count_nonzero(~np.isfinite(np.asarray(a, np.float64))))
            for a in output_leaves(out)
            if is_float(a.dtype)
        )
        for side, out in (("flax", flax_out), ("torch", torch_out))
    }


def report_settings(
    *,
    dtype: str,
    tolerance: str,
    inputs: str,
    grads: bool,
    judged: JudgedGradients,
    calibrated: int,
    pairs: Sequence[Pair],
    unmatched_torch: Sequence[Call],
    loose: LooseVariables,
    unchecked: Sequence[str],
    unfilled_buffers: Sequence[str],
    not_judged: Sequence[str],
    nonfinite: dict[str, int],
) -> dict[str, Any]:
    """The report's settings: the same keys whichever way the pair was captured and matched."""
    return {
        "dtype": dtype,
        "tolerance": tolerance,
        # Comparisons judged with the float64 calibration added: those that did not pass the rounding bounds
        # alone, and every gradient once the float64 pass has run (the calibration only widens a tolerance,
        # so a comparison passing without it passes with it: the verdicts are those of always calibrating)
        "calibrated": calibrated,
        "inputs": inputs,
        "grads": grads,
        # NaN/Inf in a row's forward pass leave its gradients undefined (JAX's relu passes 0 at NaN, torch's
        # NaN): such rows are not judged, their outputs are (NaN against NaN is equal)
        "gradient_rows_dropped_nonfinite": judged.dropped_nonfinite,
        # rows near a kink (relu's input within its tolerance of 0), left out where the gradients failed with
        # them and some rows remain: the gradients were then judged on the others
        "gradient_rows_dropped_at_kinks": judged.dropped_at_kinks,
        "nonfinite_outputs": nonfinite,
        "matched": f"{sum(p.rule is not None for p in pairs)} layers, {sum(p.rule is None for p in pairs)} composites",
        "unmatched_torch": [f"{c.name} ({c.kind})" for c in unmatched_torch],
        "tied": describe_ties(tied_variables(pairs)),
        # blocks whose own comparison failed while every matched layer and the output pass: the two sides
        # take their arguments (a 0/1 mask vs an additive one) or cut their blocks differently
        "composites_not_judged": list(not_judged),
        # variables outside rule-backed layers, paired with port tensors of their shape (gradient rows too)
        "loose_variables": [f"{p.flax_path} <-> {p.torch_name}" for p in loose.pairs],
        "unchecked_torch": list(unchecked),
        "unfilled_torch_buffers": list(unfilled_buffers),
        "unpaired_flax_variables": list(loose.unfilled_flax),
    }


def unchecked_problem(unchecked: Sequence[str]) -> str:
    """The problem that port parameters no Flax variable fills make (unless ``allow_unchecked``)."""
    return (
        f"{len(unchecked)} port parameters are compared with no Flax variable (unchecked): "
        + ", ".join(unchecked[:8])
        + (", ..." if len(unchecked) > 8 else "")
        + "; port or pair them (mapping=), or pass allow_unchecked=True if they do not matter"
    )
