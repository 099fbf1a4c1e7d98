"""Gradients of a loss on both sides, w.r.t. every matched parameter (and the input, where the model takes one
floating array), mapped by the layer rules: one comparison for chains and trees alike.

Their tolerance has two parts: the analytic bound of ``gradient_tolerance`` with a floor for sums that cancel,
and a calibration that measures how sensitive the Flax gradient is to rounding (large through normalisations,
which divide by a small deviation, and through derivatives of transcendental functions). Below float64 the
Flax gradient is computed again in float64: the difference is the reference's own error, and a correct port
may differ by a few times that much. In float64 it is computed again in float32: the difference, scaled by
the ratio of unit roundoffs, estimates the float64 error the same way. That rerun happens only once a row
fails the analytic bound alone (``CALIBRATE_LAZILY``): the calibration only widens a tolerance, so the
verdicts are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import torch

from .._numerics import Precision, Tolerance, finite_rms, gradient_tolerance
from .._tensors import is_float, to_numpy
from ..match import LoosePair, Pair, tensor_holders, tied_variables
from ._compare import compare
from ._flax_runs import FlaxRuns, error_scale
from ._outputs import in_flax_layout, keyed_like, output_leaves
from ._report import GradientRow
from ._rows import batch_rows, finite_rows, rows_near_kink, take_rows

Loss = Callable[[Any], Any]

# Roundings of the output's cotangent allowed where a gradient cancels to about zero.
C_FLOOR = 4.0
# In float64: derivatives of elementary functions differ between implementations by up to this
# many roundings (measured: about 500 for the tanh-approximate GELU's derivative).
C_DERIVATIVE_ROUNDOFFS = 2048.0
# How many times the reference's own measured error a correct port may show.
C_CALIBRATION = 8.0
# Judge each comparison by the rounding bounds first, and run the reference in the other precision only
# for those they fail (the calibration only widens a tolerance, so the verdicts are the same). False
# calibrates every comparison: the tests check that both give the same verdicts.
CALIBRATE_LAZILY = True


def calibration(error: np.ndarray) -> np.ndarray:
    """How far a correct port may lie from the reference whose own rounding error is ``error`` (the
    reference minus itself in more precision): ``C_CALIBRATION * (|error| + rms(error))``, NaN read as 0."""
    magnitude = np.abs(np.nan_to_num(error))
    return C_CALIBRATION * (magnitude + finite_rms(magnitude))


def calibration_against(value: np.ndarray, reference: Any, scale: float) -> np.ndarray:
    """``calibration`` of ``value``'s own error as measured by ``reference``, the same computation in the other
    precision; ``scale`` (``_flax_runs.error_scale``) turns their difference into that error."""
    return calibration(scale * (np.asarray(value, np.float64) - np.asarray(reference, np.float64)))


class JudgedGradients(NamedTuple):
    """The gradient rows, the input rows they were judged without (forward NaN/Inf; near a kink), and how
    many comparisons needed the calibration."""

    rows: tuple[GradientRow, ...]
    dropped_nonfinite: int
    dropped_at_kinks: int
    calibrated: int


def judge_gradients(
    runs: FlaxRuns,
    port: torch.nn.Module,
    torch_inputs: tuple[tuple[Any, ...], dict[str, Any]],
    pairs: Sequence[Pair],
    flax_output: Any,
    forward_values: Iterable[Any],
    *,
    precision: Precision,
    tolerance: Tolerance | None,
    channels_last: bool,
    loose: Sequence[LoosePair] = (),
) -> JudgedGradients:
    """``compare_gradients`` on the input rows whose Flax forward pass (``forward_values``: the inputs and
    every recorded output) is finite, NaN/Inf leaving a row's gradients undefined; where a gradient then
    fails, judged again without the rows near a kink the model meets (relu's input within its tolerance of
    0: a correct port may take the other branch there, or pass the gradient at 0 as ``clamp`` does), so that
    a real mistake is still caught on the others. Chains and trees alike."""
    rows = batch_rows(output_leaves(runs.args))
    finite = finite_rows(forward_values, rows)
    dropped_nonfinite = int(np.count_nonzero(~finite))
    calibrated = 0

    def judge(keep: np.ndarray) -> tuple[FlaxRuns, tuple[GradientRow, ...]]:
        """The gradients on the kept rows (the runs at hand where every row is kept)."""
        nonlocal calibrated
        judged, on_torch, out = runs, torch_inputs, flax_output
        if not keep.all():
            judged, on_torch, out = runs.on_rows(keep), take_rows(torch_inputs, keep), take_rows(flax_output, keep)
        found, count = compare_gradients(
            judged,
            port,
            *on_torch,
            pairs,
            out,
            precision=precision,
            tolerance=tolerance,
            channels_last=channels_last,
            loose=loose,
        )
        calibrated += count
        return judged, found

    if not finite.any():
        return JudgedGradients((), dropped_nonfinite, 0, 0)
    judged, gradient_rows = judge(finite)
    dropped_at_kinks = 0
    if not all(g.comparison.ok for g in gradient_rows):
        smooth = finite.copy()
        smooth[finite] = _rows_away_from_kinks(judged, int(np.count_nonzero(finite)), precision)
        dropped_at_kinks = int(np.count_nonzero(finite & ~smooth))
        if smooth.any() and dropped_at_kinks:
            _, gradient_rows = judge(smooth)
    return JudgedGradients(gradient_rows, dropped_nonfinite, dropped_at_kinks, calibrated)


def _rows_away_from_kinks(runs: FlaxRuns, rows: int, precision: Precision) -> np.ndarray:
    """Input rows (first axis) where no kink the Flax model meets (``bridge._jaxpr.kinks``) has an input within
    its tolerance of the kink: the calibration of its drift against the run in the other precision, as the
    end-to-end tolerances are. Every row where the model cannot be walked op by op."""
    smooth = np.ones(rows, bool)
    try:
        own, other = runs.kinks()
    except Exception:  # the user's model code may raise anything: no row is known to be near a kink
        return smooth
    if len(own) != len(other):
        return smooth
    scale = error_scale(precision, runs.other)
    for kink, wide in zip(own, other, strict=True):
        if kink.input.shape != wide.input.shape:
            continue
        x = np.asarray(kink.input, np.float64)
        smooth &= ~rows_near_kink(x, kink.at, calibration_against(x, wide.input, scale), rows)
    return smooth


def compare_gradients(
    runs: FlaxRuns,
    port: torch.nn.Module,
    torch_args: tuple[Any, ...],
    torch_kwargs: dict[str, Any],
    pairs: Sequence[Pair],
    flax_output: Any,
    *,
    precision: Precision,
    tolerance: Tolerance | None = None,
    channels_last: bool = True,
    loose: Sequence[LoosePair] = (),
) -> tuple[tuple[GradientRow, ...], int]:
    """One row per gradient, and how many rows needed the calibration: the input's first when ``runs``
    differentiates w.r.t. it (``wrt_inputs``: one floating argument), then each matched parameter's in pair
    order, the Flax one laid out for torch by its rule and the torch one found in the paired module
    (``bridge.match._match``: by the rule's name, else by value or shape; a variable no tensor holds gets a
    failing row), then each ``loose`` variable's (outside rule-backed layers). ``flax_output``: the model's
    output on these inputs (for the floor of cancelling sums);
    ``tolerance``: an explicit one instead of the derived tolerance (no calibration); ``channels_last``: False
    for a channels-first port, whose output (for the loss) and input gradient are read in Flax's layout."""
    if not runs.differentiable:
        return (), 0
    flax_grads = runs.gradients()
    flax_params, flax_input = flax_grads if runs.wrt_inputs else (flax_grads, None)

    def loss(torch_output: Any) -> Any:  # the loss sees the port's output laid out and keyed as the Flax one
        if isinstance(torch_output, torch.Tensor) and isinstance(flax_output, jax.Array | np.ndarray):
            torch_output = in_flax_layout(torch_output, flax_output, channels_last)
        return runs.loss(keyed_like(torch_output, flax_output))

    torch_input, by_tensor = _torch_gradients(port, torch_args, torch_kwargs, loss, with_input=runs.wrt_inputs)

    leaves = [p for p in pairs if p.rule is not None]
    sizes = [int(d) for p in leaves for a in p.arrays.values() for d in np.shape(a)]
    first = next((a for a in jax.tree_util.tree_leaves(runs.args) if np.ndim(a) >= 1), None)
    length = max([*sizes, 1 if first is None else int(np.prod(np.shape(first)[:-1]))])
    depth = sum(1 for p in leaves if p.flax.variables.get("params"))
    judge = _Judge(runs, precision, tolerance, _cancellation_floor(runs, flax_output, precision), length, depth)
    judge.parameters = {id(p) for p in port.parameters()}

    rows: list[GradientRow] = []
    if flax_input is not None and torch_input is not None:

        def wide_input() -> Any:
            found = runs.wide_gradients()
            return None if found is None else found[1][0]

        flax_x = np.asarray(flax_input[0])
        rows.append(judge.row("input", flax_x, wide_input, in_flax_layout(torch_input, flax_x, channels_last)))
    # A Flax variable filling several distinct port tensors (copies): Flax's gradient is the sum of theirs
    ties = {source: list({id(t): t for t in held.values()}.values()) for source, held in tied_variables(leaves).items()}
    for pair in leaves:
        rows += _pair_rows(pair, flax_params, by_tensor, ties, judge)
    for held in loose:
        rows += _loose_row(held, flax_params, by_tensor, judge)
    return tuple(rows), judge.calibrated


def _loose_row(
    held: LoosePair, flax_params: Any, by_tensor: Mapping[int, torch.Tensor | None], judge: _Judge
) -> list[GradientRow]:
    """The row of a variable outside rule-backed layers (a class token) and the port tensor holding it."""
    collection, path = held.flax_path.split("/", 1)
    value = subtree(flax_params, path) if collection == "params" else None
    if value is None or id(held.tensor) not in judge.parameters:
        return []

    def wide() -> Any:
        found = judge.runs.wide_gradients()
        return None if found is None else subtree(found[0] if judge.runs.wrt_inputs else found, path)

    grad = by_tensor.get(id(held.tensor))
    got = to_numpy(grad) if grad is not None else np.zeros(tuple(held.tensor.shape))
    got = got.T if held.transposed else got  # back to Flax's layout
    return [judge.row(f"{path} <-> {held.torch_name}", np.asarray(value), wide, got)]


def _torch_gradients(
    port: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], loss: Loss, *, with_input: bool
) -> tuple[np.ndarray | None, dict[int, torch.Tensor | None]]:
    """The port's gradients of the loss: w.r.t. its first tensor argument (``with_input``; else None) and
    every parameter, by ``id`` of the parameter (None where it does not reach the loss). The parameters'
    ``requires_grad`` flags are restored afterwards."""
    named = list(port.parameters())
    first = next((a for a in args if isinstance(a, torch.Tensor)), None) if with_input else None
    wanted = [] if first is None else [first.detach().requires_grad_(True)]
    args = tuple(wanted[0] if a is first and wanted else a for a in args)
    requested = [p.requires_grad for p in named]
    # A port frozen as a whole (for inference) is differentiated anyway; a parameter frozen alone stays frozen:
    # it is where the Flax model stops the gradient (position tables), so its gradient is zero as in training
    thaw = [True] * len(named) if not any(requested) else requested
    for p, flag in zip(named, thaw, strict=True):
        p.requires_grad_(flag)
    try:
        differentiated = [p for p, flag in zip(named, thaw, strict=True) if flag]
        found = torch.autograd.grad(loss(port(*args, **kwargs)), [*wanted, *differentiated], allow_unused=True)
        by_id = dict(zip(map(id, differentiated), found[len(wanted) :], strict=True))
        grads = (
            *found[: len(wanted)],
            *(by_id.get(id(p)) if on else torch.zeros_like(p) for p, on in zip(named, thaw, strict=True)),
        )
    finally:
        for p, flag in zip(named, requested, strict=True):
            p.requires_grad_(flag)
    by_tensor: dict[int, torch.Tensor | None] = dict(zip(map(id, named), grads[len(wanted) :], strict=True))
    if not wanted:
        return None, by_tensor
    return to_numpy(grads[0] if grads[0] is not None else torch.zeros_like(wanted[0])), by_tensor


def _pair_rows(
    pair: Pair,
    flax_params: Any,
    by_tensor: Mapping[int, torch.Tensor | None],
    ties: dict[str, list[torch.Tensor]],
    judge: _Judge,
) -> list[GradientRow]:
    """The rows of one matched leaf: each of its parameters' gradients."""
    rule = pair.rule
    assert rule is not None
    flax_tree = subtree(flax_params, pair.flax.name)
    if flax_tree is None:
        return []
    layer, variables = pair.flax.module, pair.flax.variables
    mapped = rule.torch_arrays(layer, {**variables, "params": flax_tree})
    parameters = {id(p) for p in pair.torch.module.parameters()}
    holders = tensor_holders(rule, layer, variables, pair.torch.module, mapped, by_value=True)
    rows = []
    for rule_name, value in mapped.items():
        flax_name = _flax_name(pair, rule_name)
        if flax_name is None:
            continue  # a statistic (BatchNorm's running mean): no gradient
        path = "/".join(part for part in (pair.flax.name, flax_name) if part)

        def wide(pair: Pair = pair, rule_name: str = rule_name) -> np.ndarray | None:
            found = judge.runs.wide_gradients()
            tree = None if found is None else subtree(found[0] if judge.runs.wrt_inputs else found, pair.flax.name)
            if tree is None:
                return None
            return rule.torch_arrays(pair.flax.module, {**pair.flax.variables, "params": tree})[rule_name]

        held = holders.get(rule_name)
        if held is None or id(held[1]) not in parameters:  # never compared against zeros: a row that says so and fails
            rows.append(judge.row(f"{path} <-> (no tensor of torch {pair.torch.name} holds it)", value, wide, None))
            continue
        torch_name, tensor = held
        copies = ties.get(path, [tensor])
        sources = copies if all(c.shape == tensor.shape for c in copies) else [tensor]
        found = [to_numpy(g) for g in (by_tensor.get(id(c)) for c in sources) if g is not None]
        got = found[0] if len(found) == 1 else np.zeros(tuple(tensor.shape))  # none: it does not reach the loss
        for other in found if len(found) > 1 else []:  # copies of one Flax variable: their sum
            got = got + other
        permutation = pair.input_permutation
        if permutation is not None and got.ndim == 2 and got.shape[1] == len(permutation):
            got = got[:, permutation]  # torch's columns back to Flax's order
        name = f"{path} <-> {'.'.join(part for part in (pair.torch.name, torch_name) if part)}"
        rows.append(judge.row(name, value, wide, got))
    return rows


def _flax_name(pair: Pair, torch_name: str) -> str | None:
    """The Flax variable behind one of the rule's torch tensors (a packed one keeps the torch name); None for
    one of another collection than ``params``."""
    assert pair.rule is not None
    for m in pair.rule.param_maps(pair.flax.module, pair.flax.variables):
        if m.torch_name == torch_name:
            return m.flax_name if m.collection == "params" else None
    return torch_name


class _Judge:
    """Judges one gradient row under the check's tolerance, calibrating lazily (see the module docstring)."""

    def __init__(
        self,
        runs: FlaxRuns,
        precision: Precision,
        tolerance: Tolerance | None,
        floor: float,
        length: int,
        depth: int,
    ) -> None:
        self.runs, self.precision, self.explicit = runs, precision, tolerance
        self.floor, self.length, self.depth = floor, length, depth
        self.sensitivity = error_scale(precision, runs.other)
        self.calibrated = 0
        self.parameters: set[int] = set()  # id of every port parameter (loose rows compare only those)

    def row(self, name: str, flax_value: Any, wide: Callable[[], Any], candidate: np.ndarray | None) -> GradientRow:
        """One gradient's row: judged by the rounding bounds, and where they fail (or the reference in the
        other precision is at hand anyway), with the calibration from ``wide()`` added."""
        ref = np.asarray(flax_value)  # a transposed kernel stays a view: read as float64 slab by slab
        got = np.empty((0,)) if candidate is None else candidate
        got = got.reshape(ref.shape) if got.size == ref.size and got.shape != ref.shape else got
        if self.explicit is not None:
            return GradientRow(name, compare(ref, got, self.explicit))
        precision = self.precision
        tol = gradient_tolerance(ref, self.length, self.depth, precision)
        tol = tol.plus(atol=self.floor * np.sqrt(self.length * self.depth))
        if self.sensitivity < 1.0:  # a float32 rerun shows conditioning, not how two float64 implementations differ
            derivative = C_DERIVATIVE_ROUNDOFFS * precision.storage
            tol = tol.plus(rtol=derivative, atol=derivative * finite_rms(ref))
        lazily = CALIBRATE_LAZILY and not self.runs.ran_wide  # else the other pass is at hand: use it
        comparison = compare(ref, got, tol) if lazily else None
        if comparison is not None and comparison.ok:
            return GradientRow(name, comparison)
        reference = wide()
        if reference is None:
            return GradientRow(name, comparison or compare(ref, got, tol))
        self.calibrated += 1
        ref64 = np.asarray(ref, np.float64)
        return GradientRow(
            name, compare(ref, got, tol.of(ref64) + calibration_against(ref64, reference, self.sensitivity))
        )


def _cancellation_floor(runs: FlaxRuns, output: Any, precision: Precision) -> float:
    """An absolute floor for gradients that cancel to about zero (the sum of a softmax is constant):
    a few roundings of the output's cotangent times the scale of the inputs and parameters."""
    try:
        cotangent = jax.grad(runs.loss)(output)
    except Exception:  # a loss JAX cannot differentiate on this output: the floor from the scales alone
        cotangent = np.ones(1)
    cotangents = [np.asarray(c, np.float64).ravel() for c in jax.tree_util.tree_leaves(cotangent)]
    arrays = jax.tree_util.tree_leaves((runs.variables.get("params", {}), runs.args))
    scales = [finite_rms(np.asarray(a, np.float64)) for a in arrays if is_float(np.asarray(a).dtype) and np.size(a)]
    flat = np.concatenate(cotangents) if cotangents else np.ones(1)
    return C_FLOOR * precision.accumulation * finite_rms(flat) * max([*scales, 1.0])


def subtree(tree: Any, path: str) -> Any:
    """The node of nested dicts at a ``/``-separated call path (``""``: the tree itself); None where absent."""
    node = tree
    for key in path.split("/") if path else []:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node
