"""``flax2torch check``: build the pair from the options, run the checker, print the report (text, rich,
``--json``, ``--html``, ``--plot``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from .._errors import InvalidArgumentError
from ._exit import EXIT_MATCH, EXIT_MISMATCH
from ._pair import (
    NEEDS_FLAX,
    Pair,
    PortMismatchError,
    build_pair,
    print_json,
    require_model_widths,
    require_report_path,
)


def run_check(args: argparse.Namespace) -> int:
    """``flax2torch check``: build (or import) a model and its port, check them (over ``--seeds``), report."""
    _validate_check(args)
    if args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    from ..check import check_equivalence

    try:
        pair = build_pair(args, args.seed)
    except PortMismatchError as e:
        print_json(args, {"ok": False, "error": str(e)}) if args.json else print(f"NOT EQUIVALENT: {e}")
        return EXIT_MISMATCH
    options: dict[str, Any] = {
        "n_inputs": args.n_inputs,
        "dtype": None if args.dtype == "native" else args.dtype,
        "rtol": args.rtol,
        "atol": args.atol,
        "grads": args.grads,
    }
    options.update(channels_last=not args.channels_first, mapping=pair.mapping)
    if args.seeds > 1:
        sweep = check_equivalence(
            pair.model,
            pair.variables,
            pair.torch_module,
            pair.inputs,
            seeds=range(args.seed, args.seed + args.seeds),
            **options,
        )
        report, ok = sweep.detailed, sweep.ok
        print_json(args, sweep.to_dict()) if args.json else print(sweep)
    elif args.input_shape:
        report = check_equivalence(pair.model, pair.variables, pair.torch_module, pair.inputs, **options)
        ok = report.ok
        print_json(args, {"seed": args.seed, **report.to_dict()}) if args.json else _print_report(report)
    else:
        report = check_equivalence(
            pair.model, pair.variables, pair.torch_module, pair.inputs, seed=args.seed, **options
        )
        ok = report.ok
        if args.json:
            print_json(args, {"seed": args.seed, **report.to_dict()})
        else:
            _print_seed_outputs(args, pair)
            _print_report(report)
    if args.plot:
        from ..check import plot_report

        plot_report(report, args.plot)
    if args.html:
        report.to_html(args.html)
    return EXIT_MATCH if ok else EXIT_MISMATCH


def _print_report(report: Any) -> None:
    """The report's table: drawn with rich on a terminal wide enough for it, the plain text of ``str(report)``
    anywhere else (files, pipes, logs, a narrow terminal)."""
    if sys.stdout.isatty():
        from rich.console import Console

        from ..check import print_rich_report

        if print_rich_report(report, Console(file=sys.stdout)):
            return
    print(report)


def _validate_check(args: argparse.Namespace) -> None:
    """Refuse, before anything is built, options that do not apply and work that cannot fit."""
    from .._validate import require_seed
    from ..io import require_memory
    from ._pair import mlp_check_bytes

    if args.flax is None:
        for option, value in (("--torch", args.torch), ("--params", args.params)):
            if value is not None:
                raise InvalidArgumentError(f"{option} needs --flax (the model it {NEEDS_FLAX[option]})")
    require_model_widths(args)
    tree_options = (args.input_shape, args.mapping, args.channels_first or None, args.input_range)
    if args.flax is None and any(option is not None for option in tree_options):
        raise InvalidArgumentError(
            "--input-shape, --input-range, --mapping and --channels-first describe your own model: they need --flax"
        )
    if args.keep_torch_weights and args.torch is None:
        raise InvalidArgumentError("--keep-torch-weights keeps the weights of --torch; it needs --torch MODULE:ATTR")
    if args.seeds > 1 and (args.params is not None or args.keep_torch_weights):
        raise InvalidArgumentError(
            "--seeds N draws each seed's weights from model.init: it cannot be combined with "
            "--params or --keep-torch-weights (check those weights with one seed)"
        )
    for option, value in (("--rtol", args.rtol), ("--atol", args.atol)):
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise InvalidArgumentError(f"{option} must be a finite number >= 0, got {value} (inf would pass anything)")
    require_seed(args.seed, "--seed")
    if args.seeds > 1:
        require_seed(args.seed + args.seeds - 1, f"the last seed of --seed {args.seed} --seeds {args.seeds}")
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:  # refused before the verdict, not after it
            raise InvalidArgumentError("--plot needs matplotlib: pip install 'flax-torch-bridge[plot]'")
    for option, path, suffixes in (("--plot", args.plot, (".png",)), ("--html", args.html, (".html", ".htm"))):
        if path is not None:
            require_report_path(path, option, suffixes)
    itemsize = 8 if args.dtype == "float64" else 4
    work = f"checking {args.n_inputs} inputs" + (f" for {args.seeds} seeds" if args.seeds > 1 else "")
    if args.flax is None:
        needed = mlp_check_bytes(args.n_inputs, args.in_features, args.hidden, args.out, args.seeds, itemsize)
        widths = f"widths {args.in_features}-{args.hidden}-{args.hidden}-{args.out}"
        require_memory(needed, f"{work} at {widths}", "use fewer --n-inputs/--seeds or smaller widths")
    else:
        needed = 8 * itemsize * args.seeds * args.n_inputs * args.in_features + 8 * args.n_inputs * args.in_features
        require_memory(needed, f"{work} of width {args.in_features}", "use fewer --n-inputs/--seeds")


def _print_seed_outputs(args: argparse.Namespace, pair: Pair) -> None:
    if args.flax is not None:
        return
    from .._flax_model import apply
    from .._tensors import to_numpy, to_tensor

    x = pair.inputs[:1]
    flax_out = np.asarray(apply(pair.model, pair.variables, x))[0]
    torch_out = to_numpy(pair.torch_module(to_tensor(x)).detach())[0]
    widths = f"{args.in_features}-{args.hidden}-{args.hidden}-{args.out}"
    print(f"seed {args.seed}, x = {x[0]}, widths {widths}")
    print(f"flax : {flax_out}")
    print(f"torch: {torch_out}")
    print(f"max abs difference: {np.abs(flax_out.astype(np.float64) - torch_out).max():.3e}")
    print()
