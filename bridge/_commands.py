"""What each ``flax2torch`` subcommand does, once its arguments are parsed."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, NamedTuple

import numpy as np

from ._errors import InvalidArgumentError, LayerMismatchError

EXIT_MATCH, EXIT_MISMATCH = 0, 1


class _Pair(NamedTuple):
    """One check to run: the Flax model and variables, the torch port, and the inputs (None: random)."""

    model: Any
    variables: Any
    torch_module: Any
    inputs: Any


def run_check(args: argparse.Namespace) -> int:
    """``flax2torch check``: build (or import) a model and its port, check them for each seed, report."""
    if args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    from rich.console import Console
    from rich.progress import track

    from ._check import check_equivalence

    seeds = range(args.seed, args.seed + args.seeds)
    shown = len(seeds) > 1 and not args.json
    reports = []
    try:
        for seed in track(seeds, "checking seeds", console=Console(stderr=True), disable=not shown, transient=True):
            pair = _build(args, seed)
            report = check_equivalence(
                pair.model,
                pair.variables,
                pair.torch_module,
                pair.inputs,
                seed=seed,
                n_inputs=args.n_inputs,
                dtype=None if args.dtype == "native" else args.dtype,
                rtol=args.rtol,
                atol=args.atol,
                grads=args.grads,
            )
            reports.append((seed, pair, report))
    except _PortMismatchError as e:
        print(json.dumps({"ok": False, "error": str(e)}) if args.json else f"NOT EQUIVALENT: {e}")
        return EXIT_MISMATCH
    if args.plot:
        from ._plot import plot_report

        plot_report(reports[-1][2], args.plot)
    failed = [seed for seed, _, report in reports if not report.ok]
    if args.json:
        documents = [{"seed": seed, **report.to_dict()} for seed, _, report in reports]
        print(json.dumps(documents[0] if len(documents) == 1 else {"reports": documents, "failed_seeds": failed}))
    elif len(reports) == 1:
        seed, pair, report = reports[0]
        _print_seed_outputs(args, pair, report)
        print(report)
    else:
        for seed, _, report in reports:
            if not report.ok:
                print(f"seed {seed}:\n{report}\n")
        worst = max(max(row.end_to_end.worst_ratio for row in report.layers) for _, _, report in reports)
        print(
            f"{len(reports) - len(failed)}/{len(reports)} seeds equivalent"
            + (f"; failed: {', '.join(map(str, failed[:20]))}" if failed else "")
            + f"; largest err/tol {worst:.2g}"
        )
    return EXIT_MISMATCH if failed else EXIT_MATCH


def _build(args: argparse.Namespace, seed: int) -> _Pair:
    """The models of one check: the seed problem by default, or the user's ``--flax``/``--torch``."""
    from ._convert import load_into, to_torch

    if args.flax is None:
        if args.torch is not None:
            raise InvalidArgumentError("--torch needs --flax (the model it claims to port)")
        from ._seed_model import seed_models

        x = np.zeros(args.in_features, np.float32)
        x[:1] = 1.0
        models = seed_models(seed, x, args.hidden, args.out)
        rows = np.random.default_rng(seed).standard_normal((max(args.n_inputs - 1, 0), args.in_features))
        inputs = np.vstack([x, rows.astype(np.float32)])
        return _Pair(models.model, models.variables, models.torch_module, inputs)
    model = _instantiate(args.flax, "--flax")
    variables = _variables(model, args, seed)
    if args.torch is None:
        return _Pair(model, variables, to_torch(model, variables), None)
    port = _instantiate(args.torch, "--torch")
    if not args.keep_torch_weights:
        try:
            load_into(port, model, variables)
        except LayerMismatchError as e:
            raise _PortMismatchError(f"the Flax weights do not fit the port: {e}") from e
    return _Pair(model, variables, port.eval(), None)


class _PortMismatchError(LayerMismatchError):
    """The port's layers do not fit the Flax model's weights: a verdict (exit 1), not a usage error."""


def _variables(model: Any, args: argparse.Namespace, seed: int) -> Any:
    import jax

    example = np.ones((1, args.in_features), np.float32)
    try:
        variables = model.init(jax.random.PRNGKey(seed), example)
    except Exception as e:
        raise InvalidArgumentError(
            f"cannot init {type(model).__name__} on an input of width {args.in_features}: "
            f"{str(e).splitlines()[0]} (set --in-features)"
        ) from e
    if args.params is None:
        return variables
    from ._files import read_flax_variables

    return read_flax_variables(args.params, variables)


def _instantiate(spec: str, option: str) -> Any:
    """The object named ``module:attr`` (called when it is a class or a zero-argument factory)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidArgumentError(f"{option} takes MODULE:ATTR (e.g. mypkg.models:MLP), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as e:
        raise InvalidArgumentError(f"{option} {spec}: {e}") from e
    if isinstance(target, type) or (callable(target) and not _is_model(target)):
        try:
            target = target()
        except TypeError as e:
            raise InvalidArgumentError(f"{option} {spec}: cannot call it with no arguments ({e})") from e
    if not _is_model(target):
        raise InvalidArgumentError(f"{option} {spec} is a {type(target).__name__}, not a Flax or torch module")
    return target


def _is_model(obj: Any) -> bool:
    import flax.linen as nn
    import torch

    return isinstance(obj, nn.Module | torch.nn.Module)


def _print_seed_outputs(args: argparse.Namespace, pair: _Pair, report: Any) -> None:
    if args.flax is not None:
        return
    from ._flax_model import apply
    from ._tensors import to_numpy, to_tensor

    x = pair.inputs[:1]
    flax_out = np.asarray(apply(pair.model, pair.variables, x))[0]
    torch_out = to_numpy(pair.torch_module(to_tensor(x)).detach())[0]
    widths = f"{args.in_features}-{args.hidden}-{args.hidden}-{args.out}"
    print(f"seed {args.seed}, x = {x[0]}, widths {widths}")
    print(f"flax : {flax_out}")
    print(f"torch: {torch_out}")
    print(f"max abs difference: {np.abs(flax_out.astype(np.float64) - torch_out).max():.3e}")
    print()
