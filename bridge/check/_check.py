"""``check_equivalence``: run a Flax model and its torch port side by side and say where they differ and why."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar, overload

import jax.numpy as jnp
import numpy as np
import torch

from .. import _progress as progress
from .._arguments import torch_argument
from .._errors import NotEquivalentError, UnsupportedModelError
from .._numerics import Precision
from .._tensors import is_float, to_numpy
from .._validate import require_mapping, require_port, require_variables
from ..capture import Step, Variables, chain_calls, discover_chain, flax_layer_outputs, torch_chain_calls
from ..match import LooseVariables, Pair, chain_steps, find_input_permutations, match_positions
from ..rules import rule_or_none
from ._check_tree import check_tree, pair_row, run_isolated
from ._compare import compare
from ._divergence import Detail, first_divergence
from ._flax_runs import FlaxRuns, other_dtype
from ._gradients import JudgedGradients, judge_gradients
from ._outputs import in_flax_layout, projected_sum
from ._prepare import (
    CheckOptions,
    cast_compute_dtype,
    cast_inputs,
    cast_pair,
    chain_inputs,
    explicit_tolerance,
    layer_bounds,
    refuse_training_mode,
)
from ._report import (
    Divergence,
    EquivalenceReport,
    LayerRow,
    SeedSweepReport,
    describe_inputs,
    describe_tolerance,
)
from ._rows import first_nonfinite
from ._settings import nonfinite_outputs, report_settings, unchecked_problem, unfilled_port_tensors
from ._sweep import sweep_seeds

Loss = Callable[[Any], Any]
_Port = TypeVar("_Port", bound=torch.nn.Module)


@overload
def check_equivalence(
    model: Any,
    variables: Variables | None,
    torch_module: torch.nn.Module,
    inputs: Any = None,
    *,
    seed: int = 0,
    seeds: None = None,
    n_inputs: int = 32,
    dtype: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    grads: bool = True,
    loss: Loss | None = None,
    channels_last: bool = True,
    torch_inputs: Any = None,
    mapping: Mapping[str, str] | None = None,
    allow_unchecked: bool = False,
) -> EquivalenceReport: ...


@overload
def check_equivalence(
    model: Any,
    variables: Variables | None,
    torch_module: torch.nn.Module,
    inputs: Any = None,
    *,
    seed: int = 0,
    seeds: Iterable[int],
    n_inputs: int = 32,
    dtype: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    grads: bool = True,
    loss: Loss | None = None,
    channels_last: bool = True,
    torch_inputs: Any = None,
    mapping: Mapping[str, str] | None = None,
    allow_unchecked: bool = False,
) -> SeedSweepReport: ...


def check_equivalence(
    model: Any,
    variables: Variables | None,
    torch_module: torch.nn.Module,
    inputs: Any = None,
    *,
    seed: int = 0,
    seeds: Iterable[int] | None = None,
    n_inputs: int = 32,
    dtype: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    grads: bool = True,
    loss: Loss | None = None,
    channels_last: bool = True,
    torch_inputs: Any = None,
    mapping: Mapping[str, str] | None = None,
    allow_unchecked: bool = False,
) -> EquivalenceReport | SeedSweepReport:
    """Check that ``torch_module`` computes what the Flax ``model`` computes with ``variables``, layer by layer.

    Two ways, chosen by the pair. A chain (an ``nn.Sequential`` model, or one returning one, against a
    ``torch.nn.Sequential``) is compared position by position. Anything else (a compact, setup or nested
    linen model, several inputs, a port of any ``torch.nn.Module``) is compared as call trees: every
    module call on both sides is captured, calls are matched by structure (the rule's kind and the shapes
    of the tensors it lays out, then call order; never names), and every matched call is compared end to
    end and isolated; the report names calls by their paths (``Block_0/Dense_1`` and ``blocks.0.fc1``).

    Arguments:
        model, variables: the Flax reference and what its ``init`` returned; or an NNX module and None
            (it holds its own variables; put it in eval mode). An ``nnx.Sequential`` against a
            ``torch.nn.Sequential`` is a chain; any other NNX module is a tree whose calls are named by
            attribute path (``block/linear1``).
        torch_module: the port. It is not modified (a copy is cast when ``dtype`` is given); put it in
            eval mode yourself.
        inputs: an array ``(batch..., in_features)`` fed to both sides; by default (chains only)
            ``n_inputs`` rows of standard normal numbers drawn from ``seed``, as wide as the first layer
            expects. For trees: an array, a tuple of positional arguments, or a dict of keyword
            arguments for the model's ``apply`` (integer arrays too).
        torch_inputs: the port's arguments where its signature differs (trees); by default ``inputs``
            as tensors, NHWC moved to NCHW when ``channels_last`` is False.
        allow_unchecked: port parameters that no Flax variable fills (so that nothing compares them: a tensor
            outside every matched layer, or one a port's module holds beyond what its rule accounts for) are
            listed, and make the verdict NOT EQUIVALENT unless this is True.
        mapping: ``{"Block_0/Dense_1": "blocks.0.fc2", ...}`` (fnmatch globs allowed) pairs calls before
            the structural matching (trees).
        dtype: cast both sides' floating variables and the inputs to it, chains and trees (``"float64"``
            needs ``jax_enable_x64``); by default each side computes in its own dtype.
        rtol, atol: compare with ``atol + rtol * |flax|`` instead of the tolerance derived from each
            layer's rounding error; setting one takes the other from ``bridge.DEFAULT_RTOL_ATOL``.
        grads: also compare the gradients of ``loss`` with respect to the input and every parameter.
        loss: a scalar function of the output written so that it works on a ``jax.Array`` and a
            ``torch.Tensor`` alike (``lambda y: (y ** 2).sum()``); by default every output weighted by fixed
            random numbers and summed (a plain sum has no gradient through a final LayerNorm).
        seeds: check many seeds at once (linen models): for each seed s, the variables are
            ``model.init(PRNGKey(s), x)`` and the inputs are drawn from s; ``variables`` then only give
            the tree and shapes (``model.init``'s result or its ``jax.eval_shape``), and the port's
            own weights are replaced by each seed's converted ones (the port itself is left as it is).
            Initialising, converting and running are vectorised (``jax.vmap``, ``torch.func.vmap``);
            every layer's output is compared for every seed, and one seed (the first failing, else the
            first) gets a full report, with gradients when ``grads``. A tree's seeds share the given
            inputs and are checked one after another (its port is any module: not vectorised).
        channels_last: False for a channels-first port (``to_torch(..., channels_last=False)`` or your
            own): it is fed the inputs moved to ``(N, C, H, W)``, and its outputs, activations and input
            gradient are compared moved back to Flax's layout (the loss sees its output so too); a
            ``torch.flatten`` of NCHW feeds the next layer features in another order, found from the values.

    Returns:
        An ``EquivalenceReport``: ``.ok``, ``.first_divergence`` (with a ``.hint``), ``.layers``, ``str()`` a table;
        with ``seeds``, a ``SeedSweepReport``: ``.ok``, ``.failed_seeds``, ``.seed_ok``, ``.detailed``.

    Raises:
        BridgeError: when the model is not a chain, the arguments are invalid, or the torch module
            cannot run on the inputs (the message names the position).
    """
    require_port(torch_module, "torch_module")
    require_variables(variables)
    require_mapping(mapping)
    options = CheckOptions(
        seed=seed,
        n_inputs=n_inputs,
        dtype=dtype,
        rtol=rtol,
        atol=atol,
        grads=grads,
        loss=loss,
        channels_last=channels_last,
        torch_inputs=torch_inputs,
        mapping=mapping,
        allow_unchecked=allow_unchecked,
    )
    steps = chain_steps(model, variables, torch_module, inputs, torch_inputs, mapping)
    tree = steps is None
    drawn = tree and inputs is None and torch_inputs is None
    if drawn:  # a chain model against another kind of port: rows drawn as for a chain
        inputs = _chain_rows(model, variables, options)
    if seeds is not None:
        return sweep_seeds(model, variables, torch_module, seeds, inputs, check_equivalence, options, chain=not tree)
    if steps is not None:
        assert isinstance(torch_module, torch.nn.Sequential)  # every other port is a tree
        return _check_chain(model, variables, torch_module, inputs, options, steps)
    if dtype is not None:
        model, variables, torch_module = cast_pair(model, variables, torch_module, dtype)
        inputs, torch_inputs = cast_inputs((inputs, torch_inputs), dtype)
        options = options._replace(torch_inputs=torch_inputs)
    report = check_tree(model, variables if variables is not None else {}, torch_module, inputs, options)
    if drawn and inputs is not None:  # said so, as a chain's report says
        settings = {**report.settings, "inputs": describe_inputs([np.shape(inputs)], seed)}
        report = dataclasses.replace(report, settings=settings)
    return report


def _chain_rows(model: Any, variables: Variables | None, options: CheckOptions) -> np.ndarray | None:
    """Rows drawn for a chain model's first layer (None when the model is not a chain: it needs inputs)."""
    try:
        steps = discover_chain(model, variables)
    except UnsupportedModelError:
        return None
    rules = [rule_or_none(s.layer) for s in steps]
    return chain_inputs(None, steps, rules, options.seed, options.n_inputs, None) if steps else None


def _check_chain(
    model: Any,
    variables: Variables | None,
    torch_module: torch.nn.Sequential,
    inputs: Any,
    options: CheckOptions,
    steps: tuple[Step, ...],
) -> EquivalenceReport:
    """A chain (its ``steps``) against a ``torch.nn.Sequential``, position by position, tolerances propagated
    by the rules."""
    seed, dtype, channels_last = options.seed, options.dtype, options.channels_last
    if dtype is not None:
        model, variables, cast_port = cast_pair(model, variables, torch_module, dtype)
        torch_module = cast_port  # a Sequential still (mypy keeps the declared type through the tuple)
        model, steps = cast_compute_dtype(model, variables, discover_chain(model, variables), dtype)
    refuse_training_mode(steps)
    rules = [rule_or_none(step.layer) for step in steps]
    x = chain_inputs(inputs, steps, rules, seed, options.n_inputs, dtype)
    tolerance = explicit_tolerance(options.rtol, options.atol, x.dtype)

    progress.step(f"running the Flax chain ({len(steps)} positions)")
    flax_outputs = [np.asarray(y) for y in flax_layer_outputs(model, variables, jnp.asarray(x))]
    progress.step("running the torch chain")
    torch_x = torch_argument(x, channels_last)
    with torch.no_grad():
        torch_final, torch_calls = torch_chain_calls(torch_module, torch_x)
    matching, structure = match_positions(chain_calls(steps, x, flax_outputs), torch_calls, rules)
    if not channels_last:  # torch's flatten of NCHW feeds the next layer another order, found from the values
        find_input_permutations(matching.pairs)
    problems = [structure[1]] if structure else []

    positions: list[_Position] = []
    rows: list[LayerRow] = []
    details: list[Detail | None] = []
    tol_in = np.zeros(x.shape)
    paired = {p.flax.index: p for p in matching.pairs}
    # a position feeding a layer that reads a flatten's features in torch's order gives them in that order
    out_permutations = [p.input_permutation for p in matching.pairs[1:]] + [None]
    progress.step(f"comparing {len(steps)} positions end to end and isolated")
    for step, rule, call in zip(
        steps, rules, [*(p.flax for p in matching.pairs), *matching.unmatched_flax], strict=True
    ):
        x_in, y = call.args[0], call.output
        bound_e2e, bound_iso, precision = layer_bounds(step, rule, x_in, y, tol_in, tolerance)
        pair = paired.get(step.index)
        if pair is None:  # past the end of a shorter torch chain: nothing to compare against
            missing = compare(y, np.empty(0), bound_e2e)
            rows.append(LayerRow(step.index, step.kind, call.name, "", "", missing, None))
            details.append(Detail(x_in, y, None, bound_iso, precision))
        else:
            permutation = out_permutations[step.index]
            torch_y = in_flax_layout(to_numpy(pair.torch.output), y, channels_last, permutation)
            isolated = run_isolated(pair, channels_last)
            isolated = np.full((0,), np.nan) if isolated is None else isolated  # the row shows it could not run
            isolated_y = in_flax_layout(isolated, y, channels_last, permutation)
            row, detail = pair_row(step.index, pair, call.name, torch_y, isolated_y, (bound_iso, bound_e2e))
            rows.append(row)
            details.append(detail)
        positions.append(_Position(step, pair, bound_e2e))
        tol_in = bound_e2e
    flax_final = np.asarray(flax_outputs[-1], np.float64)
    output = compare(
        flax_final, in_flax_layout(to_numpy(torch_final), flax_final, channels_last), positions[-1].bound_e2e
    )

    judged = JudgedGradients((), 0, 0, 0)
    if options.grads and not problems:
        differentiable = is_float(x.dtype)
        runs = FlaxRuns(
            model,
            variables,
            (jnp.asarray(x),),
            {},
            options.loss or projected_sum,
            wrt_inputs=differentiable,
            other=other_dtype(x.dtype if differentiable else np.float32),
        )
        progress.step("comparing the gradients")
        judged = judge_gradients(
            runs,
            torch_module,
            ((torch_argument(x, channels_last),), {}),
            matching.pairs,
            flax_outputs[-1],
            (x, *flax_outputs),
            precision=Precision.of(x.dtype if differentiable else np.float32),
            tolerance=tolerance,
            channels_last=channels_last,
        )
    gradient_rows = judged.rows

    first = first_divergence(
        tuple(rows),
        details,
        matching.pairs,
        [p.flax for p in matching.pairs],
        _structure_divergence(positions, structure),
        gradient_rows,
        channels_last,
    )
    # a chain has no loose variables (every one belongs to a position), but a position's module may hold more
    unchecked, unfilled_buffers = unfilled_port_tensors(torch_module, matching.pairs, _NO_LOOSE)
    if unchecked and not options.allow_unchecked:
        problems.append(unchecked_problem(unchecked))
    ok = not problems and all(row.ok for row in rows) and output.ok and all(g.comparison.ok for g in gradient_rows)
    return EquivalenceReport(
        ok=ok,
        first_divergence=first,
        layers=tuple(rows),
        output=output,
        gradients=gradient_rows,
        problems=tuple(problems),
        nonfinite={
            "flax": first_nonfinite(flax_outputs),
            "torch": first_nonfinite([to_numpy(c.output) for c in torch_calls]),
        },
        settings=report_settings(
            dtype=np.dtype(x.dtype).name,
            tolerance=describe_tolerance(tolerance),
            inputs=describe_inputs([x.shape], seed if inputs is None else None),
            grads=bool(options.grads),
            judged=judged,
            calibrated=0,  # a chain's tolerances are its rules' bounds, propagated: no float64 run
            pairs=matching.pairs,
            unmatched_torch=matching.unmatched_torch,
            loose=_NO_LOOSE,
            unchecked=unchecked,
            unfilled_buffers=unfilled_buffers,
            not_judged=(),
            nonfinite=nonfinite_outputs(flax_outputs[-1], torch_final),
        ),
    )


def assert_equivalent(
    model: Any, variables: Variables | None, torch_module: torch.nn.Module, inputs: Any = None, **options: Any
) -> EquivalenceReport:
    """``check_equivalence`` for tests: returns the report when equivalent, else raises ``NotEquivalentError``
    (an ``AssertionError``) whose message is the report's table (first divergence and hint included) and
    whose ``report`` is the report."""
    report = check_equivalence(model, variables, torch_module, inputs, **options)
    if not report.ok:
        raise NotEquivalentError(f"the torch port is not equivalent to the Flax model:\n{report}", report)
    return report


_NO_LOOSE = LooseVariables((), (), ())


class _Position(NamedTuple):
    """What the output and the structure problem need of one chain position: its Flax layer, the pair of
    calls (None without a torch layer) and the tolerance of its output end to end."""

    step: Step
    pair: Pair | None
    bound_e2e: np.ndarray


def _structure_divergence(positions: Sequence[_Position], structure: tuple[int, str] | None) -> Divergence | None:
    """The structure problem as the report's first divergence, at the position where it starts."""
    if structure is None:
        return None
    index, description = structure
    p = positions[min(index, len(positions) - 1)]
    torch_name = p.pair.torch.name if p.pair is not None and index < len(positions) else ""
    return Divergence(index, "/".join(p.step.flax_path), torch_name, p.step.kind, "structure", description)
