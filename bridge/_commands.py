"""What each ``flax2torch`` subcommand does, once its arguments are parsed."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from typing import Any, NamedTuple

import numpy as np

from ._errors import InvalidArgumentError, LayerMismatchError, first_line

EXIT_MATCH, EXIT_MISMATCH = 0, 1


class _Pair(NamedTuple):
    """One check to run: the Flax model and variables, the torch port, and the inputs (None: random)."""

    model: Any
    variables: Any
    torch_module: Any
    inputs: Any


# Programs that took less than this to compile are cheaper to rebuild than to read back.
_CACHE_MIN_COMPILE_SECONDS = 0.0


def use_compile_cache() -> None:
    """Keep XLA's compiled programs between runs (JAX's persistent compilation cache): a second
    ``flax2torch check`` skips most compilation. ``FLAX2TORCH_COMPILE_CACHE`` names the folder (default
    ``$XDG_CACHE_HOME/flax-torch-bridge/xla``, or ``~/.cache/...``) or turns it off (``off``); a folder
    set through JAX's own ``JAX_COMPILATION_CACHE_DIR`` is left as it is."""
    setting = os.environ.get("FLAX2TORCH_COMPILE_CACHE", "")
    if setting.lower() in ("0", "off", "false", "no"):
        return
    import jax

    if getattr(jax.config, "jax_compilation_cache_dir", None):
        return
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = setting or os.path.join(cache_home, "flax-torch-bridge", "xla")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return  # an optimisation only: without a writable folder, compile as usual
    if not os.access(directory, os.W_OK):
        return
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _CACHE_MIN_COMPILE_SECONDS)


def run_check(args: argparse.Namespace) -> int:
    """``flax2torch check``: build (or import) a model and its port, check them (over ``--seeds``), report."""
    if args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    from ._check import check_equivalence

    if args.seeds > 1 and (args.params is not None or args.keep_torch_weights):
        raise InvalidArgumentError(
            "--seeds N draws each seed's weights from model.init: it cannot be combined with "
            "--params or --keep-torch-weights (check those weights with one seed)"
        )
    try:
        pair = _build(args, args.seed)
    except _PortMismatchError as e:
        print(json.dumps({"ok": False, "error": str(e)}) if args.json else f"NOT EQUIVALENT: {e}")
        return EXIT_MISMATCH
    options: dict[str, Any] = {
        "n_inputs": args.n_inputs,
        "dtype": None if args.dtype == "native" else args.dtype,
        "rtol": args.rtol,
        "atol": args.atol,
        "grads": args.grads,
    }
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
        print(json.dumps(sweep.to_dict()) if args.json else sweep)
    else:
        report = check_equivalence(
            pair.model, pair.variables, pair.torch_module, pair.inputs, seed=args.seed, **options
        )
        ok = report.ok
        if args.json:
            print(json.dumps({"seed": args.seed, **report.to_dict()}))
        else:
            _print_seed_outputs(args, pair)
            print(report)
    if args.plot:
        from ._plot import plot_report

        plot_report(report, args.plot)
    return EXIT_MATCH if ok else EXIT_MISMATCH


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


def _init(model: Any, in_features: int, seed: int, *, shapes_only: bool = False) -> Any:
    """``model.init`` on a batch of one input of width ``in_features`` (with ``shapes_only``, under
    ``jax.eval_shape``: the tree and shapes, nothing allocated)."""
    import jax

    def init(x: Any) -> Any:
        return model.init(jax.random.PRNGKey(seed), x)

    try:
        if shapes_only:
            return jax.eval_shape(init, jax.ShapeDtypeStruct((1, in_features), np.float32))
        return init(np.ones((1, in_features), np.float32))
    except Exception as e:  # the user's model code may raise anything
        raise InvalidArgumentError(
            f"cannot init {type(model).__name__} on an input of width {in_features}: "
            f"{first_line(e)} (set --in-features)"
        ) from e


def _variables(model: Any, args: argparse.Namespace, seed: int) -> Any:
    variables = _init(model, args.in_features, seed)
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


def _print_seed_outputs(args: argparse.Namespace, pair: _Pair) -> None:
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


def _flax_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """The Flax model of ``convert`` and the shapes of its variables (``jax.eval_shape``: nothing allocated)."""
    if args.flax is None:
        import flax_impl

        model = flax_impl.SeqMLP(hidden=args.hidden, out=args.out)
    else:
        model = _instantiate(args.flax, "--flax")
    return model, _init(model, args.in_features, args.seed, shapes_only=True)


def run_convert(args: argparse.Namespace) -> int:
    """``flax2torch convert SRC DST``: Flax checkpoint <-> torch checkpoint, then an equivalence check."""
    from ._convert import from_state_dict, to_state_dict, torch_module_for
    from ._files import FLAX_FORMATS, checkpoint_format, load_checkpoint, save_checkpoint

    source_format, destination_format = checkpoint_format(args.source), checkpoint_format(args.destination)
    if (source_format in FLAX_FORMATS) == (destination_format in FLAX_FORMATS):
        raise InvalidArgumentError(
            f"convert goes between a Flax file (.msgpack, Orbax folder) and a torch file (.safetensors, .pt); "
            f"got {source_format} -> {destination_format}"
        )
    model, target = _flax_model(args)
    if source_format in FLAX_FORMATS:
        variables = load_checkpoint(args.source, target, strict=args.strict)
        save_checkpoint(to_state_dict(model, variables), args.destination, force=args.force)
        written = _read_back(load_checkpoint, args.destination)
    elif source_format == "safetensors" and destination_format == "msgpack":
        from ._stream import stream_safetensors_to_msgpack

        stream_safetensors_to_msgpack(
            args.source, args.destination, model, target, force=args.force, strict=args.strict
        )
        variables = _read_back(load_checkpoint, args.destination, target) if args.check else None
        written = _read_back(load_checkpoint, args.source) if args.check else None
    else:
        written = load_checkpoint(args.source, strict=args.strict)
        variables = from_state_dict(model, written, target)
        save_checkpoint(variables, args.destination, force=args.force)
        variables = _read_back(load_checkpoint, args.destination, target)
    print(f"wrote {args.destination} ({destination_format}) from {args.source} ({source_format})")
    if not args.check:
        return EXIT_MATCH
    from ._check import check_equivalence

    port = torch_module_for(model, variables, written)
    report = check_equivalence(model, variables, port, seed=args.seed, n_inputs=8, grads=False)
    if report.ok:
        worst = max(row.end_to_end.worst_ratio for row in report.layers)
        print(f"check: EQUIVALENT on 8 random inputs (largest err/tol {worst:.2g})")
        return EXIT_MATCH
    divergence = report.first_divergence
    where = f" at position {divergence.index} ({divergence.kind}): {divergence.hint}" if divergence else ""
    print(f"check: NOT EQUIVALENT{where}")
    return EXIT_MISMATCH


def _read_back(load: Any, *args: Any) -> Any:
    """Read a file this command has already read or written: its NaN/Inf were reported once already."""
    from ._files import NonFiniteWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteWarning)
        return load(*args)


def run_golden(args: argparse.Namespace) -> int:
    """``flax2torch golden OUT.safetensors``: the seed model's variables, inputs and both outputs, with versions."""
    import flax
    import jax
    import torch

    from ._atomic import atomic_output
    from ._convert import to_state_dict
    from ._seed_model import seed_models
    from ._tensors import to_numpy, to_tensor

    rng = np.random.default_rng(args.seed)
    inputs = rng.standard_normal((args.n_inputs, args.in_features)).astype(np.float32)
    models = seed_models(args.seed, inputs, args.hidden, args.out)
    with torch.no_grad():
        torch_output = models.torch_module(to_tensor(inputs))
    tensors = {f"state/{key}": value for key, value in to_state_dict(models.model, models.variables).items()}
    tensors["inputs"] = to_tensor(inputs)
    tensors["outputs/flax"] = to_tensor(np.asarray(models.model.apply(models.variables, inputs)))
    tensors["outputs/torch"] = torch_output.contiguous()
    metadata = {
        "jax": jax.__version__,
        "flax": flax.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "seed": str(args.seed),
        "widths": f"{args.in_features}-{args.hidden}-{args.hidden}-{args.out}",
    }
    from safetensors.torch import save_file

    with atomic_output(args.destination, force=args.force) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    largest = float(np.abs(to_numpy(tensors["outputs/flax"]) - to_numpy(torch_output)).max())
    print(f"wrote {args.destination}: {len(tensors)} tensors; flax vs torch max abs difference {largest:.3e}")
    return EXIT_MATCH


COMMANDS = {"check": run_check, "convert": run_convert, "golden": run_golden}
