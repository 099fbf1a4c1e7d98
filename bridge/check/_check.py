"""``check_equivalence``: run a Flax model and its torch port side by side and say where they differ and why."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, overload

import numpy as np
import torch

from .._errors import NotEquivalentError
from .._validate import require_mapping, require_port, require_variables
from ..capture import Variables, chain_or_none, drawn_rows
from ..match import chain_steps
from ._check_pair import check_pair
from ._prepare import (
    CheckOptions,
    cast_inputs,
    cast_pair,
    explicit_tolerance,
)
from ._report import (
    EquivalenceReport,
    SeedSweepReport,
    describe_inputs,
)
from ._sweep import sweep_seeds

Loss = Callable[[Any], Any]


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
    explicit_tolerance(rtol, atol, np.float32)  # refuses a negative rtol or atol before anything runs
    steps = chain_steps(model, variables, torch_module, inputs, torch_inputs, mapping)
    drawn = steps is None and inputs is None and torch_inputs is None
    if drawn and (model_steps := chain_or_none(model, variables)) is not None:
        inputs = drawn_rows(model_steps, seed, n_inputs)  # a chain model against another kind of port: as a chain's
    if seeds is not None:
        return sweep_seeds(
            model, variables, torch_module, seeds, inputs, check_equivalence, options, chain=steps is not None
        )
    if steps is None and dtype is not None:  # a chain casts its positions itself (their compute dtypes too)
        model, variables, torch_module = cast_pair(model, variables, torch_module, dtype)
        inputs, torch_inputs = cast_inputs((inputs, torch_inputs), dtype)
        options = options._replace(torch_inputs=torch_inputs)
    report = check_pair(model, variables, torch_module, inputs, options, steps)
    if drawn and inputs is not None:  # said so, as a chain's report says
        settings = {**report.settings, "inputs": describe_inputs([np.shape(inputs)], seed)}
        report = dataclasses.replace(report, settings=settings)
    return report


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
