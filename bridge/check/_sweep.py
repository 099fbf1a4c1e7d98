"""``check_equivalence(..., seeds=...)``: many seeds initialised in one compiled call, then compared.

A chain against a ``torch.nn.Sequential`` takes the fast path: the Flax side is one
``jax.jit(jax.vmap(...))`` of ``model.init`` and of the layer-by-layer run over the seeds' keys; the torch
side runs the port with ``torch.func.functional_call`` under ``torch.func.vmap`` over the seeds' converted
weights (stacked, leading axis = seed); the tolerances come from the same rules as a single check, computed
for every seed in one call where the rule allows (``LayerRule.stacked_bounds``). Any other port is a module
whose calls only the structural matching pairs with Flax's: each seed's variables are loaded into a copy of
it and checked one after another. Either way each seed's verdict is that of ``check_equivalence(...,
grads=False)`` on that seed, and one seed (the first failing, else the first) gets the full report
(gradients included when asked).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch.utils import _pytree as torch_tree

from .. import _flax_model as flax_model
from .. import _progress as progress
from .._arguments import call_arguments, torch_argument
from .._errors import InvalidArgumentError, LayerMismatchError, first_line
from .._tensors import to_numpy, to_tensor
from .._validate import require_seed
from ..capture import Step, Variables, discover_chain, flax_layer_outputs, refuse_training_mode
from ..convert import PlannedStep, flatten_permutations, load_into
from ..match import flatten_permutation, owned_tensors
from ..rules import LayerRule, rule_for_flax
from ._compare import SeedComparison, compare_per_seed
from ._outputs import in_flax_layout, in_torch_order
from ._prepare import (
    CheckOptions,
    cast_pair,
    chain_inputs,
    explicit_tolerance,
    layer_bounds,
    one_seed,
)
from ._report import EquivalenceReport, SeedSweepReport, describe_tolerance

Params = list[dict[str, torch.Tensor]]


def sweep_seeds(
    model: Any,
    template: Variables | None,
    port: torch.nn.Module,
    seeds: Iterable[Any],
    inputs: Any,
    check_one: Callable[..., EquivalenceReport],
    options: CheckOptions,
    *,
    chain: bool,
) -> SeedSweepReport:
    """The sweep behind ``check_equivalence(..., seeds=...)``: ``check_one`` is the single-seed check (for the
    detailed report) and ``options`` its options; ``chain``: the fast path applies. The port itself
    is left as it is."""
    seed_list = _valid_seeds(seeds)
    if flax_model.is_nnx(model):
        raise InvalidArgumentError(
            "seeds= draws each seed's weights with model.init, which an NNX model does not have: "
            "check an NNX model without seeds="
        )
    if chain:
        assert isinstance(port, torch.nn.Sequential)
        return _sweep_chain(model, template, port, seed_list, inputs, check_one, options)
    return _sweep_one_by_one(model, template, port, seed_list, inputs, check_one, options)


def _sweep_chain(
    model: Any,
    template: Variables | None,
    torch_module: torch.nn.Sequential,
    seed_list: list[int],
    inputs: Any,
    check_one: Callable[..., EquivalenceReport],
    options: CheckOptions,
) -> SeedSweepReport:
    """The fast path: a chain's seeds, vectorised on both sides."""
    steps = discover_chain(model, template)
    for step in steps:
        refuse_training_mode(step.layer, step.where)
    rules = [rule_for_flax(step.layer, step.where) for step in steps]
    dtype = options.dtype
    xs = np.stack([chain_inputs(inputs, steps, seed, options.n_inputs, dtype) for seed in seed_list])

    progress.step(f"initialising {len(seed_list)} seeds in one compiled call")
    native = init_seeds(model, seed_list, xs)
    first = one_seed(native, 0)
    _check_fits(template, first)
    channels_last = options.channels_last
    # raises, naming the layer, when it cannot fit
    fitted = load_into(model, first, copy.deepcopy(torch_module), channels_last=channels_last)
    stacked, port = native, torch_module
    if dtype is not None:
        _, stacked, port = cast_pair(model, native, torch_module, dtype)
    stacked_steps = discover_chain(model, stacked)

    flax_outputs = [
        np.asarray(y) for y in jax.jit(jax.vmap(lambda v, x: flax_layer_outputs(model, v, x)))(stacked, jnp.asarray(xs))
    ]
    flax_inputs = [xs, *flax_outputs[:-1]]
    # a channels-first port whose flatten orders features (C, H, W) takes the next Linear's columns so ordered
    columns = {} if channels_last else flatten_permutations(list(map(PlannedStep, steps, rules)), torch_module)
    children = list(port)
    params = _stacked_torch_params(steps, stacked_steps, rules, children, columns)
    with torch.no_grad():
        torch_outputs = _torch_chain(children, params, _torch_layout(xs, channels_last, None))
    # in Flax's layout, a channels-first flatten's order (found from the first seed's values) undone
    permutations = [
        None if channels_last else _flatten_order(y, t) for y, t in zip(flax_outputs, torch_outputs, strict=True)
    ]
    permutations[-1] = None  # the model's output is compared in its own order
    torch_outputs = [
        _flax_layout(t, y, channels_last, p) for t, y, p in zip(torch_outputs, flax_outputs, permutations, strict=True)
    ]
    with torch.no_grad():
        isolated = [
            _torch_isolated(child, p, _torch_layout(x, channels_last, before))
            for child, p, x, before in zip(children, params, flax_inputs, [None, *permutations[:-1]], strict=True)
        ]
    isolated = [
        None if t is None else _flax_layout(t, y, channels_last, p)
        for t, y, p in zip(isolated, flax_outputs, permutations, strict=True)
    ]

    tolerance = explicit_tolerance(options.rtol, options.atol, xs.dtype)
    tol_in = np.zeros(xs.shape)
    verdicts: list[SeedComparison] = []
    for step, rule, x_in, y, torch_y, torch_iso in zip(
        stacked_steps, rules, flax_inputs, flax_outputs, torch_outputs, isolated, strict=True
    ):
        bound_e2e, bound_iso, _ = layer_bounds(step.layer, step.variables, rule, x_in, y, tol_in, tolerance, True)
        y64 = np.asarray(y, np.float64)
        verdicts.append(compare_per_seed(y64, torch_y, bound_e2e))
        verdicts.append(compare_per_seed(y64, np.empty(0) if torch_iso is None else torch_iso, bound_iso))
        tol_in = bound_e2e
    seed_ok = np.all([v.mismatched == 0 for v in verdicts], axis=0)
    worst = np.max([v.worst_ratio for v in verdicts], axis=0)

    detailed_index = int(np.argmin(seed_ok))  # the first failing seed; the first seed when none fails
    detailed_seed = seed_list[detailed_index]
    own = one_seed(native, detailed_index)
    detailed = check_one(
        model,
        own,
        load_into(model, own, fitted, channels_last=channels_last),
        inputs,
        **options._replace(seed=detailed_seed)._asdict(),
    )
    seed_ok[detailed_index] &= detailed.ok
    return SeedSweepReport(
        seeds=tuple(seed_list),
        seed_ok=tuple(bool(ok) for ok in seed_ok),
        worst_ratio=tuple(float(r) for r in worst),
        detailed_seed=detailed_seed,
        detailed=detailed,
        settings={
            "seeds": len(seed_list),
            "dtype": np.dtype(xs.dtype).name,
            "tolerance": describe_tolerance(tolerance),
            "inputs": f"shape {tuple(xs.shape[1:])} per seed" + (", given" if inputs is not None else ", normal(seed)"),
            "compared per seed": "every layer's output, end to end and isolated",
            "grads": f"seed {detailed_seed} only" if options.grads else False,
        },
    )


def _sweep_one_by_one(
    model: Any,
    template: Any,
    port: torch.nn.Module,
    seed_list: list[int],
    inputs: Any,
    check_one: Callable[..., EquivalenceReport],
    options: CheckOptions,
) -> SeedSweepReport:
    """Any other port: each seed's variables loaded into a copy of it and checked one after another."""
    if inputs is None:
        raise InvalidArgumentError(
            f"{type(model).__name__} is not one nn.Sequential chain: pass inputs= for model.init and the checks"
        )
    every_seed = _init_shared(model, seed_list, inputs)
    _check_fits(template, one_seed(every_seed, 0))
    fitted = copy.deepcopy(port)
    where = {"torch_inputs": options.torch_inputs, "channels_last": options.channels_last, "mapping": options.mapping}
    seed_ok: list[bool] = []
    worst: list[float] = []
    detailed_index, detailed = 0, None
    for index in range(len(seed_list)):  # only the verdicts are kept, and the report of the seed to detail
        variables = one_seed(every_seed, index)
        with progress.prefixed(f"seed {index + 1} of {len(seed_list)}: "):
            load_into(model, variables, fitted, inputs=inputs, **where)  # raises, naming the call, when it cannot fit
            report = check_one(model, variables, fitted, inputs, **options._replace(grads=False)._asdict())
        seed_ok.append(report.ok)
        worst.append(_worst_ratio(report))
        if detailed is None or (not report.ok and seed_ok[detailed_index]):  # the first failing, else the first
            detailed_index, detailed = index, report
    assert detailed is not None  # seeds is never empty
    if options.grads:  # the detailed seed again, its gradients compared too
        progress.step(f"seed {seed_list[detailed_index]} again, with its gradients")
        variables = one_seed(every_seed, detailed_index)
        load_into(model, variables, fitted, inputs=inputs, **where)
        detailed = check_one(model, variables, fitted, inputs, **options._asdict())
        seed_ok[detailed_index] = detailed.ok
    return SeedSweepReport(
        seeds=tuple(seed_list),
        seed_ok=tuple(seed_ok),
        worst_ratio=tuple(worst),
        detailed_seed=seed_list[detailed_index],
        detailed=detailed,
        settings={
            "seeds": len(seed_list),
            "dtype": detailed.settings["dtype"],
            "tolerance": detailed.settings["tolerance"],
            "inputs": "given, the same for every seed",
            "compared per seed": "every matched call's output, end to end and isolated, and the model's output",
            "grads": f"seed {seed_list[detailed_index]} only" if options.grads else False,
        },
    )


def _init_shared(model: Any, seeds: list[int], inputs: Any) -> Any:
    """Every seed's ``model.init(PRNGKey(seed), *inputs)`` in one compiled call: NumPy leaves stacked over
    seeds, bit for bit those of the per-seed calls."""
    args, kwargs = call_arguments(inputs)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds, jnp.uint32))
    try:  # the inputs are closed over: settings among them (train=False) stay Python values
        stacked = jax.jit(jax.vmap(lambda key: model.init(key, *args, **kwargs)))(keys)
    except Exception as e:  # the user's model code may raise anything
        raise InvalidArgumentError(
            f"cannot init {type(model).__name__} on the given inputs for seeds=: {first_line(e)}"
        ) from e
    return jax.tree_util.tree_map(np.asarray, stacked)


def _worst_ratio(report: EquivalenceReport) -> float:
    """The largest error / tolerance of a report's calls (end to end and isolated) and output."""
    comparisons = [report.output, *(c for row in report.layers for c in (row.end_to_end, row.isolated) if c)]
    return float(max(c.worst_ratio for c in comparisons))


def init_seeds(model: Any, seeds: Sequence[int], xs: np.ndarray) -> Any:
    """Every seed's ``model.init(PRNGKey(seed), xs[i])`` in one compiled call: NumPy leaves stacked over seeds,
    bit for bit those of the per-seed calls."""
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds, jnp.uint32))
    return jax.tree_util.tree_map(np.asarray, jax.jit(jax.vmap(model.init))(keys, xs))


def _valid_seeds(seeds: Iterable[Any]) -> list[int]:
    """The seeds as ints in ``[0, 2**32)`` (``PRNGKey`` would silently wrap larger ones)."""
    try:
        values = list(seeds)
    except TypeError as e:
        raise InvalidArgumentError(f"seeds must be an iterable of integers (range(100)), got {seeds!r}") from e
    if not values:
        raise InvalidArgumentError("seeds is empty: give at least one seed")
    return [require_seed(value, "every seed") for value in values]


def _check_fits(template: Variables | None, first: Any) -> None:
    """The variables each seed's init makes must have the tree and shapes of the template."""

    def shapes(tree: Any) -> Any:
        return jax.tree_util.tree_map(lambda a: tuple(a.shape), dict(tree))

    if template is None or shapes(template) != shapes(first):
        raise InvalidArgumentError(
            "variables must be what model.init returns (or its jax.eval_shape): with seeds=, they give "
            "the tree and shapes that each seed's init is checked against"
        )


def _stacked_torch_params(
    steps: Sequence[Step],
    stacked: Sequence[Step],
    rules: Sequence[LayerRule],
    children: Sequence[torch.nn.Module],
    columns: dict[int, np.ndarray],
) -> Params:
    """Each position's converted weights, stacked over seeds, laid out for torch, by the name of the port's
    tensor that holds each (a layer wrapped in a module of the user's: ``conv.weight``). The maps come from
    one seed's ``steps``: a rule reads the layout from unstacked shapes. ``columns``: by position, the
    permutation of a matrix's input features into torch's order (Flax feature j is torch column p[j])."""
    params: Params = []
    for one, many, rule, child in zip(steps, stacked, rules, children, strict=True):
        own = {}
        for held in owned_tensors(rule, one.layer, one.variables, child, by_value=False):
            m = held.param_map
            array = m.flax_to_torch(np.asarray(many.variables[m.collection][m.flax_name]), stacked=True)
            permutation = columns.get(one.index)
            if permutation is not None and array.ndim == 3 and array.shape[-1] == len(permutation):
                array = in_torch_order(array, permutation)
            own[held.torch_name] = to_tensor(np.ascontiguousarray(array))
        params.append(own)
    return params


def _per_seed(function: Callable[..., Any], *args: Any) -> Any:
    """``torch.func.vmap(function)(*args)`` over the leading axis; a loop over seeds for modules vmap cannot run."""
    try:
        return torch.func.vmap(function)(*args)
    except RuntimeError:
        seeds = len(torch_tree.tree_leaves(args)[0])
        results = [function(*one_seed(args, s)) for s in range(seeds)]
        return torch_tree.tree_map(lambda *ts: torch.stack(ts), *results)


def _torch_chain(children: Sequence[torch.nn.Module], params: Params, xs: np.ndarray) -> list[np.ndarray]:
    """Every position's output of the port, each seed running on its own weights and inputs."""

    def chain(weights: Params, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = []
        for child, own in zip(children, weights, strict=True):
            x = torch.func.functional_call(child, own, (x,))
            outputs.append(x)
        return tuple(outputs)

    try:
        outputs = _per_seed(chain, params, to_tensor(xs))
    except RuntimeError as e:
        raise LayerMismatchError(f"the torch port failed on inputs of shape {xs.shape[1:]}: {first_line(e)}") from e
    return [to_numpy(y) for y in outputs]


def _torch_isolated(child: torch.nn.Module, weights: dict[str, torch.Tensor], x: np.ndarray) -> np.ndarray | None:
    """One torch layer on the Flax layer's input, per seed (None when it cannot run on it: a shape mismatch)."""
    try:
        y = _per_seed(lambda own, inputs: torch.func.functional_call(child, own, (inputs,)), weights, to_tensor(x))
    except RuntimeError:
        return None
    return to_numpy(y)


def _torch_layout(xs: np.ndarray, channels_last: bool, permutation: np.ndarray | None) -> np.ndarray:
    """Every seed's Flax input as the port takes it: moved channels-first, and in the order of torch's flatten
    of NCHW (``permutation``) where the layer reads one."""
    moved = np.stack([to_numpy(torch_argument(x, channels_last)) for x in xs])
    if permutation is None or moved.ndim != 3 or moved.shape[-1] != len(permutation):
        return moved
    return in_torch_order(moved, permutation)


def _flax_layout(ts: np.ndarray, ys: np.ndarray, channels_last: bool, permutation: np.ndarray | None) -> np.ndarray:
    """Every seed's torch output laid out as the Flax one (``bridge.check._outputs.in_flax_layout``)."""
    return np.stack([in_flax_layout(t, y, channels_last, permutation) for t, y in zip(ts, ys, strict=True)])


def _flatten_order(ys: np.ndarray, ts: np.ndarray) -> np.ndarray | None:
    """The channels-first flatten permutation of a position's torch output, found from the first seed's values."""
    return flatten_permutation(ys[0], ts[0]) if ys.ndim == 3 and ys.shape == ts.shape else None
