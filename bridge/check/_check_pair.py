"""Check any Flax model (linen or NNX) against any torch port, chains and trees by one procedure: run both and
pair their calls (a chain's positions in order; a tree's module calls by structure), compare every pair end to
end and isolated, compare the gradients of every matched parameter, find the first divergence, report.

Tolerances, chosen per call. A call on the chain the model opens with (the positions of an ``nn.Sequential`` fed
the model's input: every position of a chain) gets its rule's bound, propagated from position to position, up to
the first position that holds variables without a rule. Any other call: a matched call whose
rule has an error analysis (Dense, Conv, norms, Embed) gets that rule's bound in isolation; a rule-backed call
without one (attention) a calibrated one: the call run alone in float64 on the same inputs shows the reference's
own rounding error d, and a correct port may differ by ``C_CALIBRATION * (|d| + rms(d))`` plus a few roundings
of the output. End to end, the whole model run in float64 shows how the errors before each call have grown, and
the same calibration is added; composites take that drift in isolation too (it bounds their own error, with no
extra run).

Cost. Every comparison is judged by the rounding bounds alone first; the float64 runs (one compiled pass
for every call's output and the gradients, ``bridge.check._flax_runs``) happen only when one fails them, and
that comparison is judged again with the calibration added. It only widens a tolerance, so the verdicts
are those of calibrating everything (``_gradients.CALIBRATE_LAZILY``; the tests compare both).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
import torch
from flax import nnx

from .. import _flax_model as flax_model
from .. import _progress as progress
from .._arguments import torch_argument, torch_arguments
from .._errors import InvalidArgumentError
from .._jaxpr import first_narrowing
from .._numerics import Precision, Tolerance, function_rounding
from .._tensors import is_array, is_float, to_numpy
from ..capture import (
    Call,
    Step,
    capture_flax,
    capture_torch,
    discover_chain,
    nnx_variables,
    pair_arguments,
    positions,
    refuse_training_mode,
)
from ..match import (
    NO_LOOSE,
    LooseVariables,
    Matching,
    Pair,
    find_input_permutations,
    match_calls,
    match_loose,
    pair_own_calls,
    unpaired_flax,
)
from ..rules import BoundInputs, LayerRule, rule_for_call
from . import _gradients
from ._compare import Comparison, compare
from ._divergence import Detail, first_divergence
from ._flax_runs import FlaxRuns, as_dtype, error_scale, other_dtype
from ._gradients import JudgedGradients, calibration_against, judge_gradients
from ._outputs import first_array, in_flax_layout, in_torch_order, keyed_like, output_leaves, projected_sum
from ._prepare import (
    CheckOptions,
    cast_compute_dtype,
    cast_pair,
    chain_inputs,
    explicit_tolerance,
    floating_dtype,
    layer_bounds,
)
from ._report import Divergence, EquivalenceReport, LayerRow, describe_inputs, describe_tolerance
from ._rows import first_nonfinite
from ._settings import nonfinite_outputs, report_settings, unchecked_problem, unfilled_port_tensors


class _Captured(NamedTuple):
    """Both sides run once and their calls paired: what the comparisons need, however it was found."""

    model: Any  # as checked (cast to ``dtype`` for a chain)
    variables: Any
    port: torch.nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    torch_args: tuple[Any, ...]
    torch_kwargs: dict[str, Any]
    flax_out: Any
    torch_out: Any
    flax_calls: list[Call]
    matching: Matching
    loose: LooseVariables
    channels_last: bool
    inputs_drawn_from: int | None  # the seed a chain's rows were drawn from (None: given)


def check_pair(
    model: Any,
    variables: Any,
    port: torch.nn.Module,
    inputs: Any,
    options: CheckOptions,
    steps: tuple[Step, ...] | None,
) -> EquivalenceReport:
    """``check_equivalence`` once the pair's way of being paired is known (see ``bridge.check_equivalence``):
    both sides captured alike (``_capture``); ``steps``, a chain's positions, paired with the port's children in
    order (the matcher's fast path); None, the call trees matched by structure. Everything after the pairing is
    one procedure, the tolerance method
    chosen per call (``_propagated`` bounds along the chain the model opens with, the calibration elsewhere: see
    the module docstring). Explicit ``rtol``/``atol`` judge every call, the output and the gradients instead
    (no calibration); with ``allow_unchecked``, port parameters that no Flax variable fills do not make the
    verdict NOT EQUIVALENT (they are still listed)."""
    captured = _capture(model, variables, port, inputs, options, steps)
    model, variables, port = captured.model, captured.variables, captured.port
    args, kwargs, flax_out, torch_out = captured.args, captured.kwargs, captured.flax_out, captured.torch_out
    flax_calls, matching, loose, channels_last = (
        captured.flax_calls,
        captured.matching,
        captured.loose,
        captured.channels_last,
    )
    tolerance = explicit_tolerance(options.rtol, options.atol, floating_dtype(args))
    computes_in = _dtype_name(flax_out)
    precision = Precision.of(computes_in)
    other = other_dtype(computes_in)  # the calibration's reference: float64 (float32 for float64)
    # one floating array fed to both sides alike: its gradient is compared too
    wrt_inputs = options.torch_inputs is None and _one_floating_argument(args, kwargs)
    loss = options.loss or projected_sum
    runs = FlaxRuns(model, variables, args, kwargs, loss, wrt_inputs=wrt_inputs, other=other)
    chained = _propagated(captured, tolerance)
    if tolerance is None and np.dtype(computes_in).itemsize == 8 and len(chained) < len(matching.pairs):
        _refuse_narrowing(model, runs, flax_calls)
    rows, details, output, calibrated = _rows(captured, chained, runs, tolerance, other)
    judged_pairs, rows, details, not_judged = _composites_not_judged(matching.pairs, rows, details, output.ok)
    problems = [matching.structure[1]] if matching.structure is not None else []
    problems += [
        unpaired_flax(c, flax_calls)
        + (": port it, or pair it with mapping={'" + c.name + "': 'torch.name'}" if c.name else "")
        for c in ([] if matching.structure is not None else matching.unmatched_flax)
    ]
    runs.release_outputs()  # float64 call outputs: no longer needed, and the gradients are the memory peak
    judged = JudgedGradients((), 0, 0, 0)
    if options.grads and not problems:
        progress.step("comparing the gradients")
        judged = judge_gradients(
            runs,
            port,
            (captured.torch_args, captured.torch_kwargs),
            matching.pairs,
            flax_out,
            # rows with NaN or Inf anywhere in the Flax forward pass have undefined gradients: judged without them
            (*output_leaves((args, kwargs)), *(leaf for call in flax_calls for leaf in output_leaves(call.output))),
            precision=precision,
            tolerance=tolerance,
            channels_last=channels_last,
            loose=loose.pairs,
        )
        calibrated += judged.calibrated
    gradient_rows = judged.rows
    structure = _structure_divergence(matching, problems)

    def rerun(pair: Pair, module: torch.nn.Module) -> np.ndarray | None:  # a candidate repair, in Flax's layout
        out = run_isolated(pair, channels_last, module)
        expected = first_array(pair.flax.output)
        return None if out is None or expected is None else in_flax_layout(out, np.asarray(expected), channels_last)

    progress.step("locating the first divergence")
    first = first_divergence(
        rows, details, judged_pairs, flax_calls, structure, gradient_rows, channels_last, rerun=rerun
    )
    # parameters nothing compares: silently unchecked is how a wrong port passes (a buffer no Flax variable
    # fills is a constant of the port's, a rotary table: its effect is judged through the outputs)
    unchecked, unfilled_buffers = unfilled_port_tensors(port, judged_pairs, loose)
    if unchecked and not options.allow_unchecked:
        problems.append(unchecked_problem(unchecked))
    ok = not problems and all(r.ok for r in rows) and output.ok and all(g.comparison.ok for g in gradient_rows)
    return EquivalenceReport(
        ok=ok,
        first_divergence=first,
        layers=tuple(rows),
        output=output,
        gradients=gradient_rows,
        problems=tuple(problems),
        nonfinite={  # the first leaf (row number) whose output holds NaN or Inf: composites hold their leaves'
            side: first_nonfinite(
                first_array(output_leaves(getattr(p, side).output)) if p.rule is not None else None
                for p in matching.pairs
            )
            for side in ("flax", "torch")
        },
        settings=report_settings(
            dtype=computes_in,
            tolerance=describe_tolerance(tolerance),
            inputs=describe_inputs([np.shape(a) for a in output_leaves((args, kwargs))], captured.inputs_drawn_from),
            grads=bool(options.grads),
            judged=judged,
            calibrated=calibrated,
            pairs=matching.pairs,
            unmatched_torch=matching.unmatched_torch,
            loose=loose,
            unchecked=unchecked,
            unfilled_buffers=unfilled_buffers,
            not_judged=not_judged,
            nonfinite=nonfinite_outputs(flax_out, keyed_like(torch_out, flax_out)),
        ),
    )


def _capture(
    model: Any,
    variables: Any,
    port: torch.nn.Module,
    inputs: Any,
    options: CheckOptions,
    steps: tuple[Step, ...] | None,
) -> _Captured:
    """Both models run once with every call recorded (``capture_flax``, ``capture_torch``; an ``nn.Sequential``'s
    layers are calls, functions included), then paired: a chain's positions in order, a tree's calls by structure
    (``match_calls``) with the variables outside rule-backed layers paired too (``match_loose``); a flatten's
    permutations are found from the values. Only the arguments differ: a chain's are its one input (given, else
    ``n_inputs`` rows drawn from ``seed`` for its first layer), cast with both sides to ``dtype`` (every position
    computing in it); a tree's are ``inputs`` as given (cast by the caller), and a call computing in a dtype of its
    own (``nn.Dense(dtype=jnp.float32)``), which would silently ignore ``dtype``, is refused."""
    chain, dtype, channels_last = steps is not None, options.dtype, options.channels_last
    if steps is not None:
        if dtype is not None:
            model, variables, port = cast_pair(model, variables, port, dtype)
            model, steps = cast_compute_dtype(model, variables, discover_chain(model, variables), dtype)
        for step in steps:
            refuse_training_mode(step.layer, step.where)
        x = chain_inputs(inputs, steps, options.seed, options.n_inputs, dtype)
        args, torch_args = (x,), (torch_argument(x, channels_last),)
        kwargs: dict[str, Any] = {}
        torch_kwargs: dict[str, Any] = {}
    else:
        args, kwargs, torch_args, torch_kwargs, channels_last = pair_arguments(
            model, port, inputs, options.torch_inputs, channels_last
        )
    variables = variables if variables is not None else {}
    progress.step("running the Flax model, recording its calls")
    flax_out, flax_calls = capture_flax(model, variables, args, kwargs)
    if dtype is not None and not chain:
        _refuse_own_compute_dtypes(model, flax_calls, dtype)
    progress.step(f"running the port, recording its calls ({len(flax_calls)} Flax calls)")
    with torch.no_grad():
        torch_out, torch_calls = capture_torch(port, torch_args, torch_kwargs)
    progress.step(f"matching {len(flax_calls)} Flax calls with {len(torch_calls)} torch calls")
    if steps is not None:  # each position a leaf holding its step's variables (a chain's rule-less layers too)
        flax_steps = [replace(c, variables=s.variables) for c, s in zip(positions(flax_calls), steps, strict=True)]
        matching = match_calls(flax_steps, positions(torch_calls), by_position=True)
    else:
        matching = match_calls(flax_calls, torch_calls, options.mapping)
    if not chain or not channels_last:  # torch's flatten of NCHW feeds the next layer another order
        find_input_permutations(matching.pairs)
    loose = NO_LOOSE  # a chain's variables all belong to its positions (``discover_chain``)
    if not chain:
        loose = match_loose(matching, flax_model.all_variables(model, variables), port, by_value=True)
        pair_own_calls(matching, loose, flax_calls, torch_calls)
    return _Captured(
        model,
        variables,
        port,
        args,
        kwargs,
        torch_args,
        torch_kwargs,
        flax_out,
        torch_out,
        flax_calls,
        matching,
        loose,
        channels_last,
        options.seed if chain and inputs is None else None,
    )


class _Chained(NamedTuple):
    """The bounds of a call on a chain from the model's input, propagated by the rules from the call before it."""

    isolated: np.ndarray
    end_to_end: np.ndarray
    precision: Precision
    next_call: int | None  # the position after it (its flatten permutation orders this one's torch output)


def _propagated(captured: _Captured, tolerance: Tolerance | None) -> dict[int, _Chained]:
    """The calls whose tolerance is their rules' bounds propagated along a chain, by Flax call index: the positions
    of the ``nn.Sequential`` fed the model's own input (a chain's; in a tree, a Sequential the model opens with),
    each bound from its input's bound by its rule (a parameter-free position without one passes its input's
    error on, plus a rounding), up to the first position that holds variables and has no rule: from there on,
    as everywhere else, the float64 calibration decides (``_rows``)."""
    flax_calls = captured.flax_calls
    opening = next((c for c in flax_calls if _opens_with(c, captured.args, captured.kwargs)), None)
    if opening is None:
        return {}
    calls = [flax_calls[i] for i in opening.children]
    chained: dict[int, _Chained] = {}
    tol_in = np.zeros(np.shape(opening.args[0]))
    for position, call in enumerate(calls):
        rule = rule_for_call(call.module, call.method)
        if (rule is None and _holds_variables(call.module)) or not is_array(call.output) or not call.args:
            break
        next_call = calls[position + 1].index if position + 1 < len(calls) else None
        x_in, y = call.args[0], call.output
        bound_e2e, bound_iso, precision = layer_bounds(call.module, call.variables, rule, x_in, y, tol_in, tolerance)
        chained[call.index] = _Chained(bound_iso, bound_e2e, precision, next_call)
        tol_in = bound_e2e
    return chained


def _opens_with(call: Call, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a Flax call is an ``nn.Sequential``'s fed the model's own input, unchanged."""
    sequential = isinstance(call.module, nn.Sequential | nnx.Sequential)
    return sequential and len(args) == 1 and not kwargs and len(call.args) == 1 and call.args[0] is args[0]


def _path(call: Call) -> str:
    """How a row names a Flax call: its path; ``(model)`` for the model's own; nothing for a function (``relu``)."""
    return call.name or ("" if _is_function(call) else "(model)")


def _is_function(call: Call) -> bool:
    """Whether a Flax call is a function's (a position of an ``nn.Sequential``: ``relu``), not a module's."""
    return not isinstance(call.module, nn.Module | nnx.Module)


def _holds_variables(module: Any) -> bool:
    """Whether a Flax layer (linen, bound; or NNX) holds variables."""
    if isinstance(module, nnx.Module):
        return bool(nnx_variables(module))
    return isinstance(module, nn.Module) and module.scope is not None and bool(module.variables)


def _rows(
    captured: _Captured, chained: dict[int, _Chained], runs: FlaxRuns, tolerance: Tolerance | None, other: np.dtype[Any]
) -> tuple[list[LayerRow], list[Detail | None], Comparison, int]:
    """Each matched call's row and the output's, and how many comparisons needed the float64 run. The tolerance
    method is chosen per call: a ``chained`` call's are its propagated bounds; any other's are its rule's bound
    in isolation, judged by the rounding bounds first and again with the float64 drift added where they fail
    (see the module docstring). The output is judged as the last chained call when it is that call's output.
    A chain's positions past the end of a shorter port get rows with nothing to compare."""
    matching, channels_last, flax_calls = captured.matching, captured.channels_last, captured.flax_calls
    permutation_of = {p.flax.index: p.input_permutation for p in matching.pairs}

    def wide() -> list[Any]:  # every call's output in the other precision, or [] where that run differs
        outputs = runs.wide_outputs()
        return outputs if outputs is not None and len(outputs) == len(flax_calls) else []

    rows, details, calibrated = [], [], 0
    for number, pair in enumerate(matching.pairs):
        label = _path(pair.flax) or pair.flax.kind  # a function position by its kind: relu
        progress.step(f"comparing call {number + 1} of {len(matching.pairs)}: {label}")
        isolated_out = run_isolated(pair, channels_last)
        bounds = chained.get(pair.flax.index)
        if bounds is not None:
            permutation = permutation_of.get(bounds.next_call) if bounds.next_call is not None else None
            y, torch_leaves = pair.flax.output, output_leaves(pair.torch.output)
            torch_y = in_flax_layout(torch_leaves[0] if torch_leaves else np.zeros(0), y, channels_last, permutation)
            isolated = np.full((0,), np.nan) if isolated_out is None else isolated_out  # the row shows it could not run
            isolated_y = in_flax_layout(isolated, y, channels_last, permutation)
            bound_pair = (bounds.isolated, bounds.end_to_end)
            row, detail = pair_row(number, pair, _path(pair.flax), torch_y, isolated_y, bound_pair)
        else:
            row, detail = _compare_pair(number, pair, isolated_out, None, other, channels_last, tolerance)
            if tolerance is None and (not row.ok or not _gradients.CALIBRATE_LAZILY):  # again, calibrated: only wider
                row, detail = _compare_pair(number, pair, isolated_out, wide(), other, channels_last)
                calibrated += 1
        rows.append(row)
        details.append(detail)
    for call in matching.unmatched_flax if matching.structure is not None else []:
        bounds = chained.get(call.index)
        y = np.asarray(call.output)
        precision = Precision.of(y.dtype if is_float(y.dtype) else np.float32)
        iso = bounds.isolated if bounds else function_rounding(y, y, precision.storage)
        e2e = bounds.end_to_end if bounds else iso
        rows.append(LayerRow(len(rows), call.kind, call.name, "", "", compare(y, np.empty(0), e2e), None))
        details.append(Detail(first_array(call.args), y, None, iso, precision))
    flax_out, torch_out = captured.flax_out, captured.torch_out
    last = next((c for c in reversed(flax_calls) if c.index in chained and c.output is flax_out), None)
    if last is not None:
        flax_final = np.asarray(flax_out, np.float64)
        torch_final = in_flax_layout(to_numpy(torch_out), flax_final, channels_last)
        return rows, details, compare(flax_final, torch_final, chained[last.index].end_to_end), calibrated
    output = _compare_outputs(flax_out, torch_out, None, other, channels_last, tolerance)
    if tolerance is None and (not output.ok or not _gradients.CALIBRATE_LAZILY):
        output = _compare_outputs(flax_out, torch_out, wide()[:1], other, channels_last)
        calibrated += 1
    return rows, details, output, calibrated


def _structure_divergence(matching: Matching, problems: Sequence[str]) -> Divergence | None:
    """The first structure problem as the report's first divergence: where a chain of other length starts to
    differ, or the first Flax call with no counterpart."""
    if matching.structure is not None:
        index, description = matching.structure
        flax_positions = [*(p.flax for p in matching.pairs), *matching.unmatched_flax]
        call = flax_positions[min(index, len(flax_positions) - 1)]
        torch_name = matching.pairs[index].torch.name if index < len(matching.pairs) else ""
        return Divergence(index, call.name, torch_name, call.kind, "structure", description)
    if problems:
        call = matching.unmatched_flax[0]
        return Divergence(call.index, call.name, "", call.kind, "structure", problems[0])
    return None


def _composites_not_judged(
    pairs: Sequence[Pair], rows: list[LayerRow], details: list[Detail | None], output_ok: bool
) -> tuple[list[Pair], list[LayerRow], list[Detail | None], list[str]]:
    """Leave out the failing rows of composites (blocks without a rule) where every matched layer and the
    model's output pass: a block rerun with Flax's arguments, or paired with a smaller torch subtree (its
    norm has no rule), proves nothing where the two sides cut or call their blocks differently, so it never
    decides the verdict on its own. Returns what is kept, and the paths of the blocks left out."""
    leaves_ok = all(r.ok for p, r in zip(pairs, rows, strict=False) if p.rule is not None)
    kept: tuple[list[Pair], list[LayerRow], list[Detail | None]] = ([], [], [])
    dropped = []
    for pair, row, detail in zip(pairs, rows, details, strict=False):
        if pair.rule is None and not row.ok and leaves_ok and output_ok and pair.flax.parent is not None:
            dropped.append(f"{pair.flax.name} <-> {pair.torch.name or '(port)'}")
            continue
        for kept_list, value in zip(kept, (pair, row, detail), strict=True):
            kept_list.append(value)  # type: ignore[attr-defined]
    # rows past the pairs (a chain's positions past the end of a shorter port) are kept as they are
    return kept[0], kept[1] + rows[len(pairs) :], kept[2] + details[len(pairs) :], dropped


def _refuse_own_compute_dtypes(model: Any, calls: Sequence[Call], dtype: Any) -> None:
    """Raise for the first call whose module computes in a dtype of its own other than ``dtype``."""
    for call in calls:
        own = getattr(call.module, "dtype", None)
        if own is not None and jax.numpy.dtype(own) != jax.numpy.dtype(dtype):
            raise flax_model.own_compute_dtype_error(call.name or "the model", call.module, dtype, model)


def _dtype_name(value: Any) -> str:
    leaves = [a for a in output_leaves(value) if is_float(a.dtype)]
    return np.dtype(leaves[0].dtype).name if leaves else "float32"


def _compare_pair(
    number: int,
    pair: Pair,
    isolated_out: np.ndarray | None,
    wide: list[Any] | None,
    other: np.dtype[Any],
    channels_last: bool,
    tolerance: Tolerance | None = None,
) -> tuple[LayerRow, Detail | None]:
    """One matched call's row, its tolerances derived here: the rule's bound (or the calibration) in
    isolation, plus the whole model's drift end to end (or ``tolerance``'s, both ways). ``wide``: every
    call's output in the ``other`` precision, to calibrate with ([] where there is none; None: the rounding
    bounds alone, the cheap first try)."""
    flax_leaves = output_leaves(pair.flax.output)
    torch_leaves = output_leaves(keyed_like(pair.torch.output, pair.flax.output))
    y = flax_leaves[0] if flax_leaves else np.zeros(0)
    precision = Precision.of(y.dtype if is_float(y.dtype) else np.float32)
    y64 = np.asarray(y, np.float64)
    torch_y = in_flax_layout(torch_leaves[0], y, channels_last) if torch_leaves else np.zeros(0)
    isolated_y = None if isolated_out is None else in_flax_layout(isolated_out, y, channels_last)
    if tolerance is not None:
        explicit = tolerance.of(y64)
        return pair_row(number, pair, _path(pair.flax), torch_y, isolated_y, (explicit, explicit))
    wide_y = output_leaves(wide[pair.flax.index]) if wide else []
    drift: float | np.ndarray = 0.0
    if wide_y and wide_y[0].shape == y.shape:
        drift = calibration_against(y64, wide_y[0], error_scale(precision, other))
    if pair.rule is None:  # a composite: the whole model's drift bounds its own error too (no extra run)
        bound_iso = drift + function_rounding(y64, y64, precision.storage)
    else:
        x = first_array(pair.flax.args)
        bound_iso = _isolated_bound(pair, x, y64, precision, other if wide is not None else None)
    return pair_row(number, pair, _path(pair.flax), torch_y, isolated_y, (bound_iso, bound_iso + drift))


def pair_row(
    number: int,
    pair: Pair,
    flax_name: str,
    torch_y: np.ndarray,
    isolated_y: np.ndarray | None,
    bounds: tuple[np.ndarray, np.ndarray],
) -> tuple[LayerRow, Detail | None]:
    """The row of one matched call and what the divergence search needs of it (None when it passes), for
    chains and trees: its output
    end to end (``torch_y``, each side fed itself) and isolated (``isolated_y``, the torch module fed the Flax
    call's inputs; None when it could not take them), both in Flax's layout, under ``bounds`` (isolated,
    end to end)."""
    leaves = output_leaves(pair.flax.output)
    y = leaves[0] if leaves else np.zeros(0)
    bound_iso, bound_e2e = bounds
    row = LayerRow(
        number,
        pair.flax.kind,
        flax_name,
        pair.torch.name or "(port)",
        pair.torch.kind,
        compare(y, torch_y, bound_e2e),
        None if isolated_y is None else compare(y, isolated_y, bound_iso),
    )
    if row.ok:  # only a failing row is diagnosed: a passing one keeps no arrays (a large model's memory)
        return row, None
    precision = Precision.of(y.dtype if is_float(y.dtype) else np.float32)
    return row, Detail(first_array(pair.flax.args), y, isolated_y, bound_iso, precision)


def _isolated_bound(
    pair: Pair, x: np.ndarray | None, y64: np.ndarray, precision: Precision, other: np.dtype[Any] | None
) -> np.ndarray:
    """The rule's own bound where it has one and the call takes one array; else the calibration by a run
    of the call alone in ``other`` (None: a few roundings of the output)."""
    floor = function_rounding(y64, y64, precision.storage)
    rule = pair.rule
    if rule is not None and x is not None and type(rule).error_bound is not LayerRule.error_bound:
        x64 = np.asarray(x, np.float64)
        try:
            with np.errstate(invalid="ignore", over="ignore"):
                bound = rule.error_bound(
                    pair.flax.module, pair.flax.variables, BoundInputs(x64, y64, np.zeros_like(x64), precision)
                )
            return np.broadcast_to(np.asarray(bound, np.float64), y64.shape) + 0.0
        except (ValueError, KeyError, TypeError):
            pass  # a call the analysis does not cover (extra arguments): calibrate instead
    alone = None if other is None else _standalone(pair.flax, other)
    if alone is None or alone.shape != y64.shape:
        return floor
    return calibration_against(y64, alone, error_scale(precision, other)) + floor


def _standalone(call: Call, dtype: np.dtype[Any]) -> np.ndarray | None:
    """The call's module run alone in ``dtype`` on its recorded inputs (as float64)."""
    try:
        with jax.enable_x64(True):
            leaves = output_leaves(_run_alone(call, dtype))
    except Exception:  # a module that cannot run alone (needs its parent's state)
        return None
    return np.asarray(leaves[0], np.float64) if leaves else None


def _run_alone(call: Call, dtype: Any) -> Any:
    """The call's module run alone, its variables and recorded inputs in ``dtype`` (under ``jax.enable_x64``)."""
    cast = functools.partial(as_dtype, dtype=dtype)
    args, kwargs = jax.tree_util.tree_map(cast, (call.args, call.kwargs))
    if isinstance(call.module, nnx.Module):
        return getattr(flax_model.cast(call.module, None, dtype)[0], call.method)(*args, **kwargs)
    variables = jax.tree_util.tree_map(cast, call.variables)
    return call.module.clone(parent=None).apply(variables, *args, method=call.method, **kwargs)


def _refuse_narrowing(model: Any, runs: FlaxRuns, calls: Sequence[Call]) -> None:
    """A float64 model that converts a value to a narrower dtype inside (``jax.nn.dot_product_attention``
    computes its softmax in float32) is only that accurate there, and its derived float64 tolerances would
    fail a correct port: raise, naming the first layer that narrows (else the model)."""
    found = runs.narrowing()
    if found is None:
        return
    wide, narrow = found
    where = next((call.name for call in calls if call.variables and _narrows(call)), None)
    raise InvalidArgumentError(
        f"{where or type(model).__name__} converts a {wide} value to {narrow} inside (jax.nn.dot_product_attention "
        f"computes its softmax so): its {wide} output is only {narrow}-accurate there, and the tolerances derived "
        f"for {wide} would fail a correct port. Check in {narrow} (dtype={narrow!r}), or pass rtol/atol"
    )


def _narrows(call: Call) -> bool:
    """Whether a call's module, run alone in float64, converts a floating value to a narrower dtype."""
    try:
        with jax.enable_x64(True):
            return first_narrowing(lambda: _run_alone(call, np.float64)) is not None
    except Exception:  # a module that cannot run alone
        return False


def run_isolated(pair: Pair, channels_last: bool, module: torch.nn.Module | None = None) -> np.ndarray | None:
    """The torch module of a pair (or ``module`` in its place: a candidate repair) fed the Flax call's recorded
    inputs (None when it cannot take them)."""
    channels_last = _call_channels_last(pair, channels_last)
    args, kwargs = torch_arguments(pair.flax.args, pair.flax.kwargs, channels_last)
    kwargs = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    if pair.input_permutation is not None:  # Flax's features into torch's order
        args = (in_torch_order(args[0], pair.input_permutation), *args[1:])
    try:
        with torch.no_grad():
            if pair.rule is not None:
                out = pair.rule.torch_call(module or pair.torch.module, args, kwargs)
            elif module is None and _same_tensors(args, pair.torch.args) and not kwargs and not pair.torch.kwargs:
                out = pair.torch.output  # the call itself ran on these inputs (the model's own call): not again
            else:
                out = (module or pair.torch.module)(*args)
    except Exception:  # the port's module has another signature
        return None
    leaves = output_leaves(keyed_like(out, pair.flax.output))
    expected = output_leaves(pair.flax.output)
    if not leaves or not expected:
        return None
    laid_out = in_flax_layout(leaves[0], expected[0], channels_last)
    if tuple(laid_out.shape) != tuple(expected[0].shape):
        return None  # the module takes other arguments than the Flax call (positions by offset, not by id)
    return leaves[0]


def _call_channels_last(pair: Pair, channels_last: bool) -> bool:
    """Whether the port's call took its first input in Flax's layout: as recorded, where its shape tells (a Hugging
    Face vision port fed NCHW images runs its convolutions channels-first and its transformer blocks on
    ``(batch, tokens, features)`` as Flax does); else the model's ``channels_last``."""
    flax_in = first_array(pair.flax.args)
    torch_in = next((a for a in pair.torch.args if isinstance(a, torch.Tensor)), None)
    if flax_in is None or torch_in is None or flax_in.ndim < 3:
        return channels_last
    same = tuple(torch_in.shape) == flax_in.shape
    first = tuple(torch_in.shape) == (flax_in.shape[0], flax_in.shape[-1], *flax_in.shape[1:-1])
    return same if same != first else channels_last


def _same_tensors(given: Sequence[Any], recorded: Sequence[Any]) -> bool:
    """Whether two argument lists hold the same tensors, value for value."""
    return len(given) == len(recorded) and all(
        isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
        for a, b in zip(given, recorded, strict=True)
    )


def _compare_outputs(
    flax_out: Any,
    torch_out: Any,
    wide: list[Any] | None,
    other: np.dtype[Any],
    channels_last: bool,
    tolerance: Tolerance | None = None,
) -> Comparison:
    """The model's outputs, leaf by leaf, under a few roundings plus the drift (``wide``: the model's output
    in the ``other`` precision first), or under ``tolerance``."""
    flax_leaves, torch_leaves = output_leaves(flax_out), output_leaves(keyed_like(torch_out, flax_out))
    wide = output_leaves(wide[0]) if wide else []
    if len(flax_leaves) != len(torch_leaves) or not flax_leaves:
        shape = (len(flax_leaves),)
        return compare(np.zeros(shape), np.zeros((len(torch_leaves),)), np.zeros(shape))
    references, candidates, tolerances = [], [], []
    for index, (f, t) in enumerate(zip(flax_leaves, torch_leaves, strict=True)):
        f64 = np.asarray(f, np.float64)
        precision = Precision.of(f.dtype if is_float(f.dtype) else np.float32)
        tol = function_rounding(f64, f64, precision.storage) if tolerance is None else tolerance.of(f64)
        if index < len(wide) and wide[index].shape == f.shape:
            tol = tol + calibration_against(f64, wide[index], error_scale(precision, other))
        references.append(f64.ravel())
        candidates.append(np.asarray(in_flax_layout(t, f, channels_last), np.float64).ravel())
        tolerances.append(np.broadcast_to(tol, f64.shape).ravel())
    sizes_agree = all(r.size == c.size for r, c in zip(references, candidates, strict=True))
    if not sizes_agree:
        return compare(np.concatenate(references), np.zeros(0), np.zeros(0))
    shape = np.shape(flax_leaves[0]) if len(flax_leaves) == 1 else (-1,)  # one output keeps its shape (as a chain's)
    reference, candidate, tol = (np.concatenate(a).reshape(shape) for a in (references, candidates, tolerances))
    return compare(reference, candidate, tol)


def _one_floating_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether the model takes exactly one array, a floating one, as its first positional argument."""
    arrays = [a for a in (*args, *kwargs.values()) if is_array(a)]
    return len(arrays) == 1 and bool(args) and arrays[0] is args[0] and is_float(np.asarray(args[0]).dtype)
