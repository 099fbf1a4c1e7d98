"""Where a port first goes wrong: the pair to name in the report, most specific first, with the hint that
explains it. One search for chains (every position a leaf, one level) and trees."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import torch

from .._numerics import Precision, function_rounding
from .._tensors import is_float, to_numpy
from ..capture import Call
from ..match import Pair, descendants, port_tensors
from ._compare import compare
from ._hints import activation_variants, diagnose, diagnose_call, glue_hint, hint_context
from ._outputs import first_array, in_flax_layout, output_leaves
from ._report import Divergence, GradientRow, LayerRow

# A pair's torch module, or a changed copy of it in its place, rerun on the Flax call's input (Flax's layout).
Rerun = Callable[[Pair, torch.nn.Module], "np.ndarray | None"]

# Epsilons a normalisation of the port's own is tried with when its own fails (the usual defaults).
_EPSILONS = (1e-5, 1e-6, 1e-8, 1e-12)
_EPSILON_ATTRIBUTES = ("eps", "epsilon", "variance_epsilon")


class Detail(NamedTuple):
    """What the divergence search needs of one pair: the Flax call's input and output and the torch module's
    output on that input in Flax's layout (``torch_out`` None when it could not run), the isolated tolerance,
    and the precision the model computes in (the hints' slack). The arrays are kept as recorded: only a
    divergent pair's are read, in float64 (``in_float64``), so a large model's check holds no wide copies."""

    x: np.ndarray | None
    y: np.ndarray
    torch_out: np.ndarray | None
    tolerance: np.ndarray
    precision: Precision

    def in_float64(self) -> Detail:
        """This detail with its arrays as float64 (what the hints compute in)."""

        def wide(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else np.asarray(array, np.float64)

        return self._replace(x=wide(self.x), y=np.asarray(self.y, np.float64), torch_out=wide(self.torch_out))


def first_divergence(
    rows: Sequence[LayerRow],
    details: Sequence[Detail | None],
    pairs: Sequence[Pair],
    flax_calls: Sequence[Call],
    structure: Divergence | None,
    gradient_rows: Sequence[GradientRow],
    channels_last: bool,
    rerun: Rerun | None = None,
) -> Divergence | None:
    """Where the port first goes wrong, most specific first (``rows[i]`` and ``details[i]`` are ``pairs[i]``'s,
    ``details[i]`` None where ``rows[i]`` passes: only failing rows are diagnosed,
    in Flax execution order; leaves are the pairs with a rule or with no call inside, which is every position
    of a chain): 0. a ``structure`` problem (a layer with no counterpart); 1. the first leaf failing alone
    (isolated), else failing end to end with a call hint that explains it (wrong arguments: an attention mask
    inverted); 2. the first leaf failing end to end whose input already differs, when the parameter-free
    computation before it explains that (an activation, a residual) and does not end a composite (not the
    model) that fails alone; 3. the deepest composite failing alone (a missing residual, attention scaling);
    4. the first call failing end to end with nothing failing inside it; then the first failing gradient, at
    the pair owning its parameter."""
    if structure is not None:
        return structure
    leaves = [i for i, p in enumerate(pairs) if p.rule is not None or not p.flax.children]
    composites = [i for i, p in enumerate(pairs) if p.rule is None and p.flax.children]

    def fails_alone(i: int) -> bool:
        isolated = rows[i].isolated
        return isolated is not None and not isolated.ok

    for i in leaves:
        if fails_alone(i):
            return _diverged(i, rows[i], details[i], pairs[i], "isolated", pairs, rerun)
    for i in leaves:
        hint = None if rows[i].end_to_end.ok else diagnose_call(pairs[i].flax, pairs[i].torch)
        if hint is not None:
            return Divergence(i, rows[i].flax_path, rows[i].torch_name, rows[i].kind, "end to end", hint)

    def above(call: Call) -> list[int]:  # the Flax calls it runs inside, innermost first
        found = []
        while call.parent is not None:
            found.append(call.parent)
            call = flax_calls[call.parent]
        return found

    failing_alone = [i for i in composites if fails_alone(i)]
    failing_block = {pairs[i].flax.index for i in failing_alone if pairs[i].flax.parent is not None}
    for position, i in enumerate(leaves):
        if rows[i].end_to_end.ok or position == 0:
            continue
        previous = pairs[leaves[position - 1]]
        hint = _glue(previous, pairs[i], channels_last)
        enclosing = {pairs[i].flax.index, *above(pairs[i].flax)}
        ends_a_failing_block = any(a in failing_block and a not in enclosing for a in above(previous.flax))
        if hint is not None and not ends_a_failing_block:  # else the glue at the end of that block: it is named
            return Divergence(i, rows[i].flax_path, rows[i].torch_name, rows[i].kind, "end to end", hint)
        break
    holds_failing_alone = {a for j in failing_alone for a in above(pairs[j].flax)}
    for i in failing_alone:
        if pairs[i].flax.index not in holds_failing_alone:
            inside = descendants(pairs[i].flax, flax_calls)
            found = _diverged(i, rows[i], details[i], pairs[i], "isolated", pairs, rerun)
            last = max((j for j in leaves if pairs[j].flax.index in inside), default=None)
            if found.hint is None:
                hint = _swapped_by_value(pairs[i].flax.index, pairs)
                if hint is None and last is not None:
                    hint = _skipped_residual(pairs[i], details[i], pairs[last])
                found = dataclasses.replace(found, hint=hint) if hint else found
            return found
    holds_failing = {a for j, row in enumerate(rows) if not row.end_to_end.ok for a in above(pairs[j].flax)}
    for i, row in enumerate(rows):
        if not row.end_to_end.ok and pairs[i].flax.index not in holds_failing:  # else a call inside it is deeper
            found = _diverged(i, row, details[i], pairs[i], "end to end", pairs, rerun)
            if found.hint is None and row.isolated is not None and row.isolated.ok:
                swapped = _swapped_by_value(pairs[i].flax.parent, pairs)
                if swapped is not None:  # named at the block holding the two
                    k = next((k for k, p in enumerate(pairs) if p.flax.index == pairs[i].flax.parent), i)
                    return Divergence(k, rows[k].flax_path, rows[k].torch_name, rows[k].kind, "end to end", swapped)
                found = dataclasses.replace(found, hint=_before(i, rows, pairs, flax_calls))
            return found
    failing = [g for g in gradient_rows if not g.comparison.ok]
    # a parameter's gradient names the layer that owns it; the input's only where no parameter's fails
    bad = next((g for g in failing if g.name != "input"), failing[0] if failing else None)
    if bad is None or not rows:
        return None
    parameter = bad.name.split(" <-> ")[0]
    owners = [i for i, p in enumerate(pairs) if p.rule is not None and parameter.startswith(f"{p.flax.name}/")]
    i = max(owners, key=lambda j: len(pairs[j].flax.name), default=0)
    padding = getattr(pairs[i].torch.module, "padding_idx", None) if owners else None
    if isinstance(pairs[i].torch.module, torch.nn.Embedding) and padding is not None:
        hint = (
            f"outputs match but the gradient {bad.name} differs: torch {pairs[i].torch.name} is an Embedding with "
            f"padding_idx={padding}, whose row gets no gradient, while Flax's Embed trains every row; the forward "
            "pass is the same: construct it without padding_idx for the same training, or keep that id out of "
            "the inputs"
        )
    else:
        hint = (
            f"outputs match but the gradient {bad.name} differs: check custom backward code "
            "(the backward() of any torch.autograd.Function, or hooks that change gradients)"
        )
    return Divergence(i, rows[i].flax_path, rows[i].torch_name, rows[i].kind, "gradient", hint)


# err/tol beyond which a call's error is no longer its layers' roundings compounding
_COMPOUNDING = 100.0


def _before(i: int, rows: Sequence[LayerRow], pairs: Sequence[Pair], flax_calls: Sequence[Call]) -> str:
    """Why a call that computes right on Flax's input (its isolated rerun passes) fails in the flow: errors
    compounding (a few tolerances), or the code before it, when the call before it agrees and this one's
    error is far beyond any rounding (the caller's own computation between the two: scores, a mask, a scale)."""
    j = next((j for j in range(i - 1, -1, -1) if pairs[j].rule is not None or not pairs[j].flax.children), None)
    if rows[i].end_to_end.worst_ratio < _COMPOUNDING or j is None or not rows[j].end_to_end.ok:
        return "each layer is within its own tolerance, but their errors compound beyond the bound"
    call, previous = pairs[i].flax, pairs[j].flax
    owner = flax_calls[call.parent].name if call.parent is not None else ""
    return (
        f"{call.name} computes right on Flax's input and {previous.name} before it agrees, yet {call.name}'s input "
        f"differs: the computation between them ({owner or 'the model'}'s own code) differs in the port"
    )


def _last(name: str) -> str:
    return name.replace("/", ".").rpartition(".")[2]


def _swapped_by_value(block: int | None, pairs: Sequence[Pair]) -> str | None:
    """Two layers called by the same Flax ``block`` paired by the weights they hold across their names
    (Flax ``q`` holds what torch ``k`` holds, Flax ``k`` what torch ``q`` holds): the port swapped them."""
    inside = [p for p in pairs if p.rule is not None and p.flax.parent == block]
    by_flax = {_last(p.flax.name): p for p in inside}
    for p in inside:
        a, b = _last(p.flax.name), _last(p.torch.name)
        other = by_flax.get(b)
        if a != b and other is not None and _last(other.torch.name) == a:
            return (
                f"the port's {p.torch.name} holds the weights of Flax {p.flax.name} and its {other.torch.name} "
                f"those of Flax {other.flax.name}: {b} and {a} are swapped in the port (load them the other way)"
            )
    return None


def _repaired(pair: Pair, detail: Detail, rerun: Rerun) -> str | None:
    """For a module without a rule (a Conv1D, an RMSNorm of the port's own): the one change that makes it
    compute what the Flax module computes on the same input, verified by running a changed copy of it: a square
    weight transposed, or another epsilon."""
    if pair.rule is not None or pair.flax.children:
        return None
    module = pair.torch.module
    slack = function_rounding(detail.y, detail.y, detail.precision.storage)

    def matches(candidate: torch.nn.Module) -> bool:
        out = rerun(pair, candidate)
        if out is None or np.shape(out) != detail.y.shape:
            return False
        return compare(detail.y, np.asarray(out, np.float64), detail.tolerance + slack).ok

    for name, tensor in port_tensors(module).items():
        if tensor.ndim == 2 and tensor.shape[0] == tensor.shape[1]:
            try:
                candidate = copy.deepcopy(module)
            except Exception:  # a module that cannot be copied: no repair to try
                break
            with torch.no_grad():
                held = port_tensors(candidate)[name]
                held.copy_(held.T.clone())
            if matches(candidate):
                return (
                    f"torch {pair.torch.name}.{name} holds the Flax values transposed: transposed, {pair.torch.name} "
                    f"computes what Flax {pair.flax.name} computes; reload it with bridge.load_into(model, "
                    "variables, port, inputs=...)"
                )
    for attribute in _EPSILON_ATTRIBUTES:
        value = getattr(module, attribute, None)
        if not isinstance(value, float):
            continue
        fits = []
        for epsilon in _EPSILONS:
            candidate = copy.copy(module)  # shares the tensors: only the epsilon changes
            setattr(candidate, attribute, epsilon)
            if epsilon != value and matches(candidate):
                fits.append(f"{epsilon:g}")
        if len(fits) == 1:
            return (
                f"torch {pair.torch.name} uses {attribute}={value:g}; with {attribute}={fits[0]} it computes what "
                f"Flax {pair.flax.name} computes: construct it with {attribute}={fits[0]}"
            )
        if fits:
            return (
                f"torch {pair.torch.name} uses {attribute}={value:g}; with {attribute} set to any of {', '.join(fits)} "
                f"it computes what Flax {pair.flax.name} computes (these inputs cannot tell them apart): construct "
                "it with the epsilon the Flax module uses"
            )
    return None


def _holds_anothers_weights(pair: Pair, pairs: Sequence[Pair]) -> str | None:
    """A tensor of ``pair``'s torch layer holding exactly what the rule lays out for another layer called beside
    it and not its own (query's weight holding key's, their biases in place): the port swapped them."""
    if pair.rule is None:
        return None
    tensors = port_tensors(pair.torch.module)
    for other in pairs:
        if other is pair or other.rule is None or other.flax.parent != pair.flax.parent:
            continue
        for name, array in other.arrays.items():
            held, own = tensors.get(name), pair.arrays.get(name)
            if held is None or own is None or tuple(held.shape) != np.shape(array) or np.array_equal(own, array):
                continue
            if np.array_equal(to_numpy(held), np.asarray(array)):
                return (
                    f"the port's {pair.torch.name}.{name} holds the values of Flax {other.flax.name}, not those of "
                    f"{pair.flax.name}: the two layers' {name} tensors are swapped in the port (load them back)"
                )
    return None


def _skipped_residual(block: Pair, detail: Detail | None, last: Pair) -> str | None:
    """A block whose torch output is an activation of its last layer's output alone (``relu(y)`` where
    Flax computes ``relu(x + y)``): the skip connection is missing."""
    outputs = output_leaves(last.flax.output)
    assert detail is not None  # a failing row's
    detail = detail.in_float64()
    if detail.torch_out is None or not outputs or outputs[0].shape != detail.y.shape:
        return None
    y_last = jnp.asarray(np.asarray(outputs[0]))
    tolerance = detail.tolerance + function_rounding(detail.y, detail.y, detail.precision.storage) * 4
    for name, function in activation_variants().items():
        candidate = np.asarray(function(y_last), np.float64)
        if compare(candidate, detail.torch_out, tolerance).ok and not compare(candidate, detail.y, tolerance).ok:
            return (
                f"torch's {block.torch.name} returns {name.split(' (')[0]} of its last layer's output alone where "
                f"Flax's {block.flax.name} adds the block's input first: the residual connection is missing "
                "(return act(x + y), not act(y))"
            )
    return None


def _glue(previous: Pair, pair: Pair, channels_last: bool) -> str | None:
    """A glue hint for ``pair`` whose input differs while ``previous`` (the layer before it) agrees."""
    before = output_leaves(previous.flax.output)
    flax_in = first_array(pair.flax.args)
    torch_in = next((a for a in pair.torch.args if isinstance(a, torch.Tensor)), None)
    if not before or flax_in is None or torch_in is None:
        return None
    flax64 = np.asarray(flax_in, np.float64)
    torch64 = np.asarray(in_flax_layout(to_numpy(torch_in), np.asarray(flax_in), channels_last), np.float64)
    between = (
        f"between Flax {previous.flax.name} and {pair.flax.name} (torch {previous.torch.name} -> {pair.torch.name})"
    )
    precision = Precision.of(np.asarray(flax_in).dtype if is_float(np.asarray(flax_in).dtype) else np.float32)
    return glue_hint(np.asarray(before[0], np.float64), flax64, torch64, between, precision)


def _diverged(
    i: int, row: LayerRow, detail: Detail | None, pair: Pair, mode: str, pairs: Sequence[Pair], rerun: Rerun | None
) -> Divergence:
    assert detail is not None  # a failing row's
    detail = detail.in_float64()
    hint = _holds_anothers_weights(pair, pairs) or (_repaired(pair, detail, rerun) if rerun is not None else None)
    if hint is not None:
        return Divergence(i, row.flax_path, row.torch_name, row.kind, mode, hint)
    if detail.x is not None and pair.flax.variables is not None:
        context = hint_context(
            pair.flax,
            pair.torch.module,
            detail.x,
            detail.y,
            detail.torch_out,
            detail.tolerance,
            detail.precision,
            pair.input_permutation,
            pair.rule,
        )
        try:
            hint = diagnose(context)
        except Exception:  # a hint that cannot run on this call: no diagnosis rather than a crash
            hint = None
    return Divergence(i, row.flax_path, row.torch_name, row.kind, mode, hint)
