"""``check_equivalence``: run a Flax model and its torch port side by side and say where they differ and why."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar, overload

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from .. import _flax_model as flax_model
from .. import _progress as progress
from .._arguments import call_arguments, torch_argument
from .._errors import InvalidArgumentError, NotEquivalentError, UnsupportedModelError
from .._numerics import DEFAULT_RTOL_ATOL, Precision, Tolerance
from .._tensors import is_float, to_numpy, torch_dtype
from .._validate import require_mapping, require_port, require_variables
from ..capture._capture import chain_calls, flax_layer_outputs, torch_chain_calls
from ..capture._chain import Step, Variables, discover_chain
from ..match._match_chain import match_positions
from ..match._match_tree import Pair, find_input_permutations, is_tree_pair
from ..rules import BoundInputs, LayerRule
from ..rules._registry import rule_or_none
from ._check_tree import check_tree, pair_row, run_isolated
from ._compare import compare
from ._divergence import Detail, first_divergence
from ._flax_runs import FlaxRuns, as_dtype, other_dtype
from ._gradients import compare_gradients
from ._outputs import in_flax_layout, output_leaves, projected_sum
from ._report import Divergence, EquivalenceReport, GradientRow, LayerRow, SeedSweepReport, describe_tolerance
from ._rows import finite_rows, first_nonfinite, rows_near_kink

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
        allow_unchecked: trees: port parameters that no Flax variable fills (so that nothing compares them)
            are listed, and make the verdict NOT EQUIVALENT unless this is True.
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
    if is_tree_pair(model, variables, torch_module, inputs, torch_inputs, mapping):
        if inputs is None and torch_inputs is None:  # a chain model against another kind of port: draw rows
            try:
                steps = discover_chain(model, variables)
            except UnsupportedModelError:
                steps = ()
            if steps:
                inputs = _inputs(None, steps, [rule_or_none(s.layer) for s in steps], seed, n_inputs, None)
        if seeds is not None:
            from ._sweep_tree import sweep_tree_seeds

            return sweep_tree_seeds(
                model,
                variables,
                torch_module,
                seeds,
                inputs,
                check_equivalence,
                torch_inputs=torch_inputs,
                channels_last=channels_last,
                mapping=mapping,
                grads=grads,
                dtype=dtype,
                rtol=rtol,
                atol=atol,
                loss=loss,
            )
        if dtype is not None:
            model, variables, torch_module = _cast(model, variables, torch_module, dtype)
            inputs, torch_inputs = _cast_inputs((inputs, torch_inputs), dtype)
        return check_tree(
            model,
            variables if variables is not None else {},
            torch_module,
            inputs,
            torch_inputs=torch_inputs,
            channels_last=channels_last,
            mapping=mapping,
            grads=grads,
            loss=loss,
            tolerance=_explicit_tolerance(rtol, atol, _floating_dtype(inputs)),
            dtype=dtype,
            allow_unchecked=allow_unchecked,
        )
    assert isinstance(torch_module, torch.nn.Sequential)  # every other port is a tree
    if seeds is not None:
        from ._sweep import sweep_seeds

        return sweep_seeds(
            model,
            variables,
            torch_module,
            seeds,
            inputs,
            check_equivalence,
            n_inputs=n_inputs,
            dtype=dtype,
            rtol=rtol,
            atol=atol,
            grads=grads,
            loss=loss,
            channels_last=channels_last,
        )
    if dtype is not None:
        model, variables, cast_port = _cast(model, variables, torch_module, dtype)
        torch_module = cast_port  # a Sequential still (mypy keeps the declared type through the tuple)
    steps = discover_chain(model, variables)
    if dtype is not None:
        model, steps = _cast_compute_dtype(model, variables, steps, dtype)
    _refuse_training_mode(steps)
    rules = [rule_or_none(step.layer) for step in steps]
    x = _inputs(inputs, steps, rules, seed, n_inputs, dtype)
    tolerance = _explicit_tolerance(rtol, atol, x.dtype)

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
        bound_e2e, bound_iso, precision = _bounds(step, rule, x_in, y, tol_in, tolerance)
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
        positions.append(_Position(step, rule, pair, x_in, y, tol_in, bound_e2e))
        tol_in = bound_e2e
    flax_final = np.asarray(flax_outputs[-1], np.float64)
    output = compare(
        flax_final, in_flax_layout(to_numpy(torch_final), flax_final, channels_last), positions[-1].bound_e2e
    )

    gradient_rows: tuple[GradientRow, ...] = ()
    dropped = dropped_nonfinite = 0
    if grads and not problems:
        single_sample = x.ndim < 2 and is_float(x.dtype)  # nothing to leave out
        smooth = np.ones(len(x), bool) if single_sample else _rows_away_from_kinks(positions)
        finite = finite_rows((a for p in positions for a in (p.x, p.y)), 1 if single_sample else len(x))
        dropped = int(np.count_nonzero(~smooth & finite))
        dropped_nonfinite = int(np.count_nonzero(~finite))
        smooth &= finite
        if single_sample and not finite.all():
            smooth = np.zeros(1, bool)
        if smooth.any():
            judged = x if single_sample else x[smooth]
            differentiable = is_float(x.dtype)
            runs = FlaxRuns(
                model,
                variables,
                (jnp.asarray(judged),),
                {},
                loss or projected_sum,
                wrt_inputs=differentiable,
                other=other_dtype(x.dtype if differentiable else np.float32),
            )
            progress.step("comparing the gradients")
            gradient_rows, _ = compare_gradients(
                runs,
                torch_module,
                (torch_argument(judged, channels_last),),
                {},
                matching.pairs,
                flax_outputs[-1] if single_sample else flax_outputs[-1][smooth],
                precision=Precision.of(x.dtype if differentiable else np.float32),
                tolerance=tolerance,
                channels_last=channels_last,
            )

    first = first_divergence(
        tuple(rows),
        details,
        matching.pairs,
        [p.flax for p in matching.pairs],
        _structure_divergence(positions, structure),
        gradient_rows,
        channels_last,
    )
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
        settings={
            "dtype": np.dtype(x.dtype).name,
            "tolerance": describe_tolerance(tolerance),
            "inputs": f"shape {tuple(x.shape)}" + (f", normal(seed={seed})" if inputs is None else ", given"),
            "grads": bool(grads),
            "gradient_rows_dropped_at_kinks": dropped,
            # NaN/Inf in a row's forward pass leave its gradients undefined (JAX's relu passes 0 at NaN,
            # torch's NaN): such rows are not judged, their outputs are (NaN against NaN is equal)
            "gradient_rows_dropped_nonfinite": dropped_nonfinite,
            "nonfinite_outputs": {
                "flax": int(np.count_nonzero(~np.isfinite(flax_final))),
                "torch": int(np.count_nonzero(~np.isfinite(np.asarray(to_numpy(torch_final), np.float64)))),
            },
        },
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


class _Position(NamedTuple):
    """What the gradient rows and the structure problem need of one chain position: its Flax layer and the
    pair of calls (None without a torch layer), the Flax input and output, and the tolerances of its input and
    output end to end."""

    step: Step
    rule: LayerRule | None
    pair: Pair | None
    x: np.ndarray
    y: np.ndarray
    bound_in: np.ndarray
    bound_e2e: np.ndarray


def _rows_away_from_kinks(positions: Sequence[_Position]) -> np.ndarray:
    """Input rows (first axis) where no layer input lies within its tolerance of a kink (relu at 0):
    there the two sides may take different branches, and their gradients legitimately differ."""
    rows = len(positions[0].x)
    smooth = np.ones(rows, bool)
    for p in positions:
        if p.rule is None or not p.rule.kinks:
            continue
        x64 = np.asarray(p.x, np.float64)
        tolerance = np.where(p.bound_in > 0, p.bound_in, -1.0)  # an exact input takes the same branch on both sides
        for kink in p.rule.kinks:
            smooth &= ~rows_near_kink(x64, kink, np.broadcast_to(tolerance, x64.shape), rows)
    return smooth


def _refuse_training_mode(steps: Sequence[Step]) -> None:
    """NNX Dropout and BatchNorm default to training mode: random outputs, and statistics that running
    the model would overwrite. Linen layers in that mode cannot run without extra arguments at all."""
    for step in steps:
        if (
            getattr(step.layer, "deterministic", None) is False
            or getattr(step.layer, "use_running_average", None) is False
        ):
            raise InvalidArgumentError(
                f"{step.where} is in training mode (NNX Dropout and BatchNorm are by default): "
                "call model.eval() before checking, and compare against the torch model in eval mode"
            )


def _floating_dtype(inputs: Any) -> Any:
    """The dtype of the first floating input (float32 when none is: token ids), which sets rtol/atol's defaults."""
    leaves = [] if inputs is None else output_leaves(call_arguments(inputs))
    return next((a.dtype for a in leaves if is_float(a.dtype)), np.float32)


def _explicit_tolerance(rtol: float | None, atol: float | None, dtype: Any) -> Tolerance | None:
    if rtol is None and atol is None:
        return None
    name = np.dtype(dtype).name
    default_rtol, default_atol = DEFAULT_RTOL_ATOL.get(name, DEFAULT_RTOL_ATOL["float32"])
    chosen = Tolerance(default_rtol if rtol is None else float(rtol), default_atol if atol is None else float(atol))
    if not (chosen.rtol >= 0 and chosen.atol >= 0):
        raise InvalidArgumentError(f"rtol and atol must be >= 0, got rtol={chosen.rtol}, atol={chosen.atol}")
    return chosen


_GENERIC_RULE = LayerRule()  # its error_bound: slope <= 1 and one rounding, for layers with no rule


def output_tolerance(model: Any, variables: Variables | None, inputs: Any) -> tuple[np.ndarray, np.ndarray]:
    """The Flax chain's output on ``inputs`` and how far a correct port's output may lie from it there:
    the tolerance ``check_equivalence`` derives end to end, for comparing stored (golden) outputs.

    Returns:
        ``(output, tolerance)``: float64 arrays of the output's shape.
    """
    steps = discover_chain(model, variables)
    x = np.asarray(inputs)
    outputs = [np.asarray(y) for y in flax_layer_outputs(model, variables, jnp.asarray(x))]
    tol_in = np.zeros(x.shape)
    for step, x_in, y in zip(steps, [x, *outputs[:-1]], outputs, strict=True):
        tol_in = _bounds(step, rule_or_none(step.layer), x_in, y, tol_in, None)[0]
    return np.asarray(outputs[-1], np.float64), tol_in


def _bounds(
    step: Step, rule: LayerRule | None, x_in: np.ndarray, y: np.ndarray, tol_in: np.ndarray, tolerance: Tolerance | None
) -> tuple[np.ndarray, np.ndarray, Precision]:
    """One position's output tolerances, end to end (its input off by ``tol_in``) and isolated, and its precision."""
    x64, y64 = np.asarray(x_in, np.float64), np.asarray(y, np.float64)
    precision = Precision.of(y.dtype if is_float(y.dtype) else np.float32)
    bound_e2e = _bound(rule, step, BoundInputs(x64, y64, tol_in, precision), tolerance)
    bound_iso = _bound(rule, step, BoundInputs(x64, y64, np.zeros_like(x64), precision), tolerance)
    return bound_e2e, bound_iso, precision


def _bound(rule: LayerRule | None, step: Step, inputs: BoundInputs, tolerance: Tolerance | None) -> np.ndarray:
    """The per-element tolerance of one layer's output: explicit, or derived by the layer's rule."""
    if tolerance is not None:
        return tolerance.of(inputs.y)
    if inputs.tol_in.shape != inputs.x.shape:  # the layer changes shape: its input error cannot be mapped
        inputs = inputs._replace(tol_in=np.zeros(inputs.x.shape))
    with np.errstate(invalid="ignore", over="ignore"):
        bound = (rule or _GENERIC_RULE).error_bound(step.layer, step.variables, inputs)
    return np.broadcast_to(np.asarray(bound, np.float64), inputs.y.shape)


def _inputs(
    inputs: Any, steps: Sequence[Step], rules: Sequence[LayerRule | None], seed: int, n_inputs: int, dtype: Any
) -> np.ndarray:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= int(seed) < 2**32:
        raise InvalidArgumentError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if inputs is not None:
        x = np.asarray(inputs)
        if x.ndim == 0:
            raise InvalidArgumentError("inputs must have rank >= 1 (features on the last axis), got a scalar")
        if x.size == 0:
            raise InvalidArgumentError(f"inputs of shape {tuple(x.shape)} hold no values: give at least one row")
    else:
        if not isinstance(n_inputs, int) or n_inputs < 1:
            raise InvalidArgumentError(f"n_inputs must be an integer >= 1, got {n_inputs!r}")
        first, rule = steps[0], rules[0]
        drawn = rule.random_input(first.layer, first.variables, np.random.default_rng(seed), n_inputs) if rule else None
        if drawn is None:
            raise InvalidArgumentError(
                f"{first.where} does not fix the input shape: pass inputs= (an array shaped like the model's input)"
            )
        x = drawn
    if dtype is not None and is_float(x.dtype):
        x = x.astype(jnp.dtype(dtype))
    return x


def _cast(model: Any, variables: Any, torch_module: _Port, dtype: Any) -> tuple[Any, Any, _Port]:
    """Copies of both sides in ``dtype`` (the caller's model, variables and module stay as they were)."""
    try:
        target = jnp.dtype(dtype)
    except TypeError as e:
        raise InvalidArgumentError(f"dtype {dtype!r} is not a dtype (use float32, float64 or bfloat16)") from e
    if not jnp.issubdtype(target, jnp.floating):
        raise InvalidArgumentError(f"dtype {target.name} is not a floating dtype: use float32, float64 or bfloat16")
    if target == jnp.float64 and not jax.config.read("jax_enable_x64"):
        raise InvalidArgumentError(
            "dtype float64 needs 64-bit JAX: jax.config.update('jax_enable_x64', True) before building the model"
        )
    model, variables = flax_model.cast(model, variables, target)
    return model, variables, copy.deepcopy(torch_module).to(torch_dtype(target))


def _cast_inputs(inputs: Any, dtype: Any) -> Any:
    """Every floating array among ``inputs`` (arrays, tensors, nested tuples and dicts) in ``dtype``."""

    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(torch_dtype(dtype)) if value.is_floating_point() else value
        return as_dtype(value, jnp.dtype(dtype))

    return jax.tree_util.tree_map(cast, inputs, is_leaf=lambda v: isinstance(v, torch.Tensor))


def _cast_compute_dtype(
    model: Any, variables: Any, steps: tuple[Step, ...], dtype: Any
) -> tuple[Any, tuple[Step, ...]]:
    """Layers that compute in a dtype of their own (``nn.Dense(dtype=jnp.float16)``) compute in ``dtype``
    too: cloned so in an ``nn.Sequential`` model, refused with the fix where the model builds them itself.

    Raises:
        InvalidArgumentError: naming the first layer whose compute dtype cannot be changed.
    """
    target = jnp.dtype(dtype)
    stale = [s for s in steps if getattr(s.layer, "dtype", None) is not None and jnp.dtype(s.layer.dtype) != target]
    if not stale:
        return model, steps
    if isinstance(model, nn.Sequential):
        layers = [
            layer.clone(dtype=target)
            if isinstance(layer, nn.Module) and getattr(layer, "dtype", None) is not None
            else layer
            for layer in model.layers
        ]
        model = model.clone(layers=layers)
        return model, discover_chain(model, variables)
    raise flax_model.own_compute_dtype_error(stale[0].where, stale[0].layer, target, model)


def _structure_divergence(positions: Sequence[_Position], structure: tuple[int, str] | None) -> Divergence | None:
    """The structure problem as the report's first divergence, at the position where it starts."""
    if structure is None:
        return None
    index, description = structure
    p = positions[min(index, len(positions) - 1)]
    torch_name = p.pair.torch.name if p.pair is not None and index < len(positions) else ""
    return Divergence(index, "/".join(p.step.flax_path), torch_name, p.step.kind, "structure", description)
