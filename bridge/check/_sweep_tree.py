"""``check_equivalence(..., seeds=...)`` for a tree: each seed's variables from ``model.init`` (all seeds in one
compiled call), loaded into a copy of the port through the structural matching, and checked as one seed is.

A tree's port is any ``torch.nn.Module`` whose calls only the matching pairs with Flax's, so unlike a chain's
sweep (``_sweep``) the torch side is not vectorised: the seeds are checked one after another, each verdict
that of ``check_equivalence(..., grads=False)`` on that seed's variables and the given inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from .. import _flax_model as flax_model
from .. import _progress as progress
from .._arguments import call_arguments
from .._errors import InvalidArgumentError, first_line
from ..convert._convert import load_into
from ._report import EquivalenceReport, SeedSweepReport
from ._sweep import _check_fits, _one_seed, _valid_seeds


def sweep_tree_seeds(
    model: Any,
    template: Any,
    port: torch.nn.Module,
    seeds: Iterable[Any],
    inputs: Any,
    check_one: Callable[..., EquivalenceReport],
    *,
    torch_inputs: Any,
    channels_last: bool,
    mapping: Mapping[str, str] | None,
    grads: bool,
    **options: Any,
) -> SeedSweepReport:
    """The sweep behind ``check_equivalence(..., seeds=...)`` for a tree; ``check_one`` is the single check and
    ``options`` its other keyword options (``dtype``, ``rtol``, ...). The port itself is left as it is."""
    seed_list = _valid_seeds(seeds)
    if flax_model.is_nnx(model):
        raise InvalidArgumentError(
            "seeds= draws each seed's weights with model.init, which an NNX model does not have: "
            "check an NNX model without seeds="
        )
    if inputs is None:
        raise InvalidArgumentError(
            f"{type(model).__name__} is not one nn.Sequential chain: pass inputs= for model.init and the checks"
        )
    every_seed = _init_seeds(model, seed_list, inputs)
    _check_fits(template, _one_seed(every_seed, 0))
    fitted = copy.deepcopy(port)
    where = {"torch_inputs": torch_inputs, "channels_last": channels_last, "mapping": mapping}
    seed_ok: list[bool] = []
    worst: list[float] = []
    detailed_index, detailed = 0, None
    for index in range(len(seed_list)):  # only the verdicts are kept, and the report of the seed to detail
        variables = _one_seed(every_seed, index)
        with progress.prefixed(f"seed {index + 1} of {len(seed_list)}: "):
            load_into(model, variables, fitted, inputs=inputs, **where)  # raises, naming the call, when it cannot fit
            report = check_one(model, variables, fitted, inputs, grads=False, **where, **options)
        seed_ok.append(report.ok)
        worst.append(_worst_ratio(report))
        if detailed is None or (not report.ok and seed_ok[detailed_index]):  # the first failing, else the first
            detailed_index, detailed = index, report
    assert detailed is not None  # seeds is never empty
    if grads:  # the detailed seed again, its gradients compared too
        progress.step(f"seed {seed_list[detailed_index]} again, with its gradients")
        variables = _one_seed(every_seed, detailed_index)
        load_into(model, variables, fitted, inputs=inputs, **where)
        detailed = check_one(model, variables, fitted, inputs, grads=True, **where, **options)
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
            "grads": f"seed {seed_list[detailed_index]} only" if grads else False,
        },
    )


def _init_seeds(model: Any, seeds: list[int], inputs: Any) -> Any:
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
