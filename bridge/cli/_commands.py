"""What each ``flax2torch`` subcommand does, once its arguments are parsed."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any, NamedTuple

import numpy as np

from .. import _progress as progress
from .._errors import InvalidArgumentError, LayerMismatchError
from .._flax_model import is_nnx
from ._convert_hf import run_convert_hf

EXIT_MATCH, EXIT_MISMATCH = 0, 1


class _Pair(NamedTuple):
    """One check to run: the Flax model and variables, the torch port, the inputs (None: random), and
    the user's mapping of paths (trees)."""

    model: Any
    variables: Any
    torch_module: Any
    inputs: Any
    mapping: Any = None


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


def _json(args: argparse.Namespace, payload: Any) -> None:
    """Print ``--json``'s one document on the real stdout (``main`` sends everything else, user code's prints
    included, to stderr while the command runs, so that stdout always parses)."""
    print(json.dumps(payload), file=getattr(args, "json_out", None) or sys.stdout)


def run_check(args: argparse.Namespace) -> int:
    """``flax2torch check``: build (or import) a model and its port, check them (over ``--seeds``), report."""
    _validate_check(args)
    if args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    from ..check._check import check_equivalence

    try:
        pair = _build(args, args.seed)
    except _PortMismatchError as e:
        _json(args, {"ok": False, "error": str(e)}) if args.json else print(f"NOT EQUIVALENT: {e}")
        return EXIT_MISMATCH
    options: dict[str, Any] = {
        "n_inputs": args.n_inputs,
        "dtype": None if args.dtype == "native" else args.dtype,
        "rtol": args.rtol,
        "atol": args.atol,
        "grads": args.grads,
    }
    if args.input_shape:  # your own model and port, checked as trees
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
        _json(args, sweep.to_dict()) if args.json else print(sweep)
    elif args.input_shape:
        report = check_equivalence(pair.model, pair.variables, pair.torch_module, pair.inputs, **options)
        ok = report.ok
        _json(args, {"seed": args.seed, **report.to_dict()}) if args.json else _print_report(report)
    else:
        report = check_equivalence(
            pair.model, pair.variables, pair.torch_module, pair.inputs, seed=args.seed, **options
        )
        ok = report.ok
        if args.json:
            _json(args, {"seed": args.seed, **report.to_dict()})
        else:
            _print_seed_outputs(args, pair)
            _print_report(report)
    if args.plot:
        from ..check._plot import plot_report

        plot_report(report, args.plot)
    if args.html:
        report.to_html(args.html)
    return EXIT_MATCH if ok else EXIT_MISMATCH


def _print_report(report: Any) -> None:
    """The report's table: drawn with rich on a terminal wide enough for it, the plain text of ``str(report)``
    anywhere else (files, pipes, logs, a narrow terminal)."""
    if sys.stdout.isatty():
        from rich.console import Console

        from ..check._rich import print_rich_report

        if print_rich_report(report, Console(file=sys.stdout)):
            return
    print(report)


def _validate_check(args: argparse.Namespace) -> None:
    """Refuse, before anything is built, options that do not apply and work that cannot fit."""
    from ..io._preflight import mlp_check_bytes, require_memory, require_seed, require_widths

    if args.flax is None:
        for option, value in (("--torch", args.torch), ("--params", args.params)):
            if value is not None:
                raise InvalidArgumentError(f"{option} needs --flax (the model it {_NEEDS_FLAX[option]})")
    elif args.hidden is not None or args.out is not None:
        raise InvalidArgumentError("--hidden and --out size the seed MLP; with --flax the model gives its widths")
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
    require_seed(args.seed)
    if args.seeds > 1:
        require_seed(args.seed + args.seeds - 1, f"--seed {args.seed} --seeds {args.seeds}: the last seed")
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:  # refused before the verdict, not after it
            raise InvalidArgumentError("--plot needs matplotlib: pip install 'flax-torch-bridge[plot]'")
        _require_writable_folder(args.plot, "--plot")
    if args.html:
        _require_writable_folder(args.html, "--html")
        _require_own_page(args.html)
    itemsize = 8 if args.dtype == "float64" else 4
    work = f"checking {args.n_inputs} inputs" + (f" for {args.seeds} seeds" if args.seeds > 1 else "")
    if args.flax is None:
        _seed_model_defaults(args)
        require_widths(args.in_features, args.hidden, args.out)
        needed = mlp_check_bytes(args.n_inputs, args.in_features, args.hidden, args.out, args.seeds, itemsize)
        widths = f"widths {args.in_features}-{args.hidden}-{args.hidden}-{args.out}"
        require_memory(needed, f"{work} at {widths}", "use fewer --n-inputs/--seeds or smaller widths")
    else:
        _require_in_features(args.in_features)
        needed = 8 * itemsize * args.seeds * args.n_inputs * args.in_features + 8 * args.n_inputs * args.in_features
        require_memory(needed, f"{work} of width {args.in_features}", "use fewer --n-inputs/--seeds")


_NEEDS_FLAX = {"--torch": "claims to port", "--params": "holds the variables of"}


def _seed_model_defaults(args: argparse.Namespace) -> None:
    args.hidden = 4 if args.hidden is None else args.hidden
    args.out = 2 if args.out is None else args.out


def _require_in_features(in_features: int) -> None:
    if in_features < 1:
        raise InvalidArgumentError(f"--in-features must be >= 1 (the width of the model's input), got {in_features}")


def _require_writable_folder(path: str, option: str) -> None:
    from pathlib import Path

    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    if not folder.is_dir():
        raise InvalidArgumentError(f"{option} {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"{option} {path}: cannot write in the folder {folder} (permission denied)")
    if Path(path).is_dir():
        raise InvalidArgumentError(f"{option} {path}: is a folder; name a .png file")


def _build(args: argparse.Namespace, seed: int) -> _Pair:
    """The models of one check: the seed problem by default, or the user's ``--flax``/``--torch``."""
    from ..convert._convert import load_into, to_torch

    if args.flax is None:
        from ..convert._seed_model import seed_models

        x = np.zeros(args.in_features, np.float32)
        x[:1] = 1.0
        models = seed_models(seed, x, args.hidden, args.out)
        rows = np.random.default_rng(seed).standard_normal((max(args.n_inputs - 1, 0), args.in_features))
        inputs = np.vstack([x, rows.astype(np.float32)])
        return _Pair(models.model, models.variables, models.torch_module, inputs)
    from ._user_code import load_object

    model = load_object(args.flax, "--flax")
    if args.input_shape:
        return _build_tree(args, model, seed)
    variables = _variables(model, args, seed)
    if args.torch is None:
        return _Pair(model, variables, to_torch(model, variables), None)
    port = load_object(args.torch, "--torch")
    if not args.keep_torch_weights:
        try:
            load_into(model, variables, port)
        except LayerMismatchError as e:
            raise _PortMismatchError(f"the Flax weights do not fit the port: {e}") from e
    return _Pair(model, variables, port.eval(), None)


def _build_tree(args: argparse.Namespace, model: Any, seed: int) -> _Pair:
    """Any model and port: inputs drawn from ``--input-shape``/``--input-dtype``/``--input-range``, variables
    from ``model.init`` on them (or ``--params``), the port filled by structure unless ``--keep-torch-weights``;
    without ``--torch``, the port is the model converted (``to_torch``)."""
    from ..convert._convert import load_into, to_torch
    from ._user_code import load_object

    inputs, variables = _inputs_and_variables(args, model, seed)
    mapping = _mapping(args.mapping)
    if args.torch is None:
        if args.mapping is not None or args.channels_first or args.keep_torch_weights:
            raise InvalidArgumentError("--mapping, --channels-first and --keep-torch-weights need --torch")
        return _Pair(model, variables, to_torch(model, variables, inputs), inputs, None)
    port = load_object(args.torch, "--torch")
    if not args.keep_torch_weights:
        try:
            load_into(model, variables, port, inputs=inputs, channels_last=not args.channels_first, mapping=mapping)
        except LayerMismatchError as e:
            raise _PortMismatchError(f"the Flax weights do not fit the port: {e}") from e
    return _Pair(model, variables, port.eval(), inputs, mapping)


def _inputs_and_variables(args: argparse.Namespace, model: Any, seed: int) -> tuple[Any, Any]:
    """The ``--input-shape`` inputs and the variables of ``model.init`` on them, or of ``--params``."""
    import jax

    from ..io._preflight import require_memory
    from ._user_code import contained

    inputs = _drawn_inputs(args, seed)
    call = (inputs, {}) if isinstance(inputs, tuple) else ((), inputs)
    require_memory(
        8 * sum(a.nbytes for a in (*call[0], *call[1].values())), "the inputs, 8 copies", "use smaller inputs"
    )
    if is_nnx(model):  # it holds its own variables, made when it was built
        if args.params is not None:
            raise InvalidArgumentError(f"--params: {type(model).__name__} is an NNX model; it holds its own variables")
        from flax import nnx

        _require_checkable(model, {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))}, 8)
        return inputs, None
    what = f"cannot init {type(model).__name__} on the --input-shape inputs"
    with contained(what, "model.init", " (check --input-shape)"):  # abstract: nothing allocated yet
        traced, shapes = jax.make_jaxpr(
            lambda: model.init(jax.random.PRNGKey(seed), *call[0], **call[1]), return_shape=True
        )()
    _require_checkable(model, shapes, 8)
    intermediate = _intermediate_bytes(traced.jaxpr)
    require_memory(
        _ACTIVATION_COPIES * intermediate,
        f"{type(model).__name__}'s intermediate values on these inputs ({intermediate / 2**30:.1f} GiB in float64, "
        f"{_ACTIVATION_COPIES} copies: both frameworks, the reference and the reruns)",
        "use a smaller --input-shape",
    )
    with contained(what, "model.init", " (check --input-shape)"):
        variables = model.init(jax.random.PRNGKey(seed), *call[0], **call[1])
    if args.params is not None:
        from ..io._files import read_flax_variables

        variables = read_flax_variables(args.params, variables)
    return inputs, variables


# copies of every intermediate value a tree check may hold at once (Flax's, torch's, the float64 reference's,
# an isolated rerun's), counted at 8 bytes each
_ACTIVATION_COPIES = 4


def _intermediate_bytes(jaxpr: Any) -> int:
    """The bytes of every value a traced run computes (its equations' outputs, 8 bytes per element): an upper
    bound on the activations the check records, known before anything runs."""
    total = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            shape = getattr(var.aval, "shape", None)
            if shape is not None:
                total += int(np.prod(shape, dtype=object)) * 8
    return total


def _drawn_inputs(args: argparse.Namespace, seed: int) -> Any:
    """The ``--input-shape`` inputs: a tuple of positional arrays, or a dict when every one is named."""
    from .._tensors import is_float
    from ..io._preflight import require_memory

    try:
        dtype = np.dtype(args.input_dtype)
    except TypeError as e:
        raise InvalidArgumentError(f"--input-dtype {args.input_dtype!r} is not a dtype (float32, int32, ...)") from e
    if dtype.kind not in "fiub":
        raise InvalidArgumentError(
            f"--input-dtype {dtype.name}: inputs are drawn as floating point, integer or bool numbers; "
            "give one of those (float32, int32, bool, ...)"
        )
    low, high = 0, 2
    if args.input_range is not None:
        try:
            low, high = (int(v) for v in args.input_range.split(","))
        except ValueError as e:
            raise InvalidArgumentError(f"--input-range takes LOW,HIGH (integers), got {args.input_range!r}") from e
        if high <= low:
            raise InvalidArgumentError(f"--input-range {args.input_range}: HIGH must be above LOW")
        if dtype.kind in "iu" and (low < np.iinfo(dtype).min or high - 1 > np.iinfo(dtype).max):
            raise InvalidArgumentError(
                f"--input-range {args.input_range}: {dtype.name} holds {np.iinfo(dtype).min} to "
                f"{np.iinfo(dtype).max}; give a range inside it"
            )
    rng = np.random.default_rng(seed)
    positional, named = [], {}
    for spec in args.input_shape:
        name, _, shape_text = spec.rpartition("=")
        try:
            shape = tuple(int(v) for v in shape_text.split(",") if v.strip())
        except ValueError as e:
            raise InvalidArgumentError(f"--input-shape {spec!r}: the shape is integers separated by commas") from e
        if not shape or min(shape) < 1:
            raise InvalidArgumentError(f"--input-shape {spec!r}: every axis must be >= 1")
        drawn = int(np.prod(shape, dtype=object)) * 8  # drawn in 64 bits, then cast: before any allocation
        require_memory(drawn, f"the --input-shape {spec} input", "use a smaller --input-shape")
        if is_float(dtype):
            array = rng.standard_normal(shape).astype(dtype)
        else:
            array = rng.integers(low, high, shape).astype(dtype)
        if name:
            named[name] = array
        else:
            positional.append(array)
    if named and positional:
        raise InvalidArgumentError("--input-shape: name every input (NAME=SHAPE) or none of them")
    return named if named else tuple(positional)


def _mapping(path: str | None) -> dict[str, str] | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            mapping = json.load(handle)
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(f"--mapping {path}: {e}") from e
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise InvalidArgumentError(f'--mapping {path}: expected a JSON object of strings, {{"Dense_0": "fc1"}}')
    return mapping


class _PortMismatchError(LayerMismatchError):
    """The port's layers do not fit the Flax model's weights: a verdict (exit 1), not a usage error."""


def _init(model: Any, in_features: int, seed: int, *, shapes_only: bool = False, copies: int = 8) -> Any:
    """``model.init`` on a batch of one input of width ``in_features`` (with ``shapes_only``, under
    ``jax.eval_shape``: the tree and shapes, nothing allocated). The parameters are checked first
    (from their shapes): floating point, no empty (zero-width) layer, and ``copies`` of them (the
    checker's: both frameworks, gradients, float64 references) within the memory available.

    Raises:
        InvalidArgumentError: the model does not init, or its parameters cannot be checked or do not fit.
    """
    import jax

    from ._user_code import contained

    def init(x: Any) -> Any:
        return model.init(jax.random.PRNGKey(seed), x)

    what = f"cannot init {type(model).__name__} on an input of width {in_features}"
    with contained(what, "model.init", " (set --in-features)"):
        shapes = jax.eval_shape(init, jax.ShapeDtypeStruct((1, in_features), np.float32))
    _require_checkable(model, shapes, copies)
    if shapes_only:
        return shapes
    with contained(what, "model.init", " (set --in-features)"):
        return init(np.ones((1, in_features), np.float32))


def _require_checkable(model: Any, shapes: Any, copies: int) -> None:
    """Float parameters, none empty, and room for ``copies`` of them in memory."""
    from .._tensors import is_float
    from ..io._files import flatten_variables
    from ..io._preflight import require_memory

    name = type(model).__name__
    total = 0
    for path, leaf in sorted(flatten_variables(shapes).items()):
        shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)
        if 0 in shape:
            raise InvalidArgumentError(
                f"{name}: {path} has shape {shape}: a layer of width 0; give every layer at least one unit"
            )
        if path.startswith("params/") and not is_float(dtype):
            raise InvalidArgumentError(
                f"{name}: {path} is {dtype.name}; the bridge converts and checks floating-point parameters "
                "(set param_dtype to a float dtype)"
            )
        total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    what = f"{name}'s parameters ({total / 2**30:.1f} GiB, {copies} copies at once)"
    require_memory(copies * total, what, "use a smaller model or a machine with more memory")


def _variables(model: Any, args: argparse.Namespace, seed: int) -> Any:
    if is_nnx(model):
        raise InvalidArgumentError(
            f"{type(model).__name__} is an NNX model: give --input-shape (its variables are its own, not drawn)"
        )
    variables = _init(model, args.in_features, seed)
    if args.params is None:
        return variables
    from ..io._files import read_flax_variables

    return read_flax_variables(args.params, variables)


def is_model(obj: Any) -> bool:
    """Whether ``obj`` is a Flax (linen or NNX) or torch module (a factory of one is not)."""
    import flax.linen as nn
    import torch
    from flax import nnx

    return isinstance(obj, nn.Module | nnx.Module | torch.nn.Module)


def _print_seed_outputs(args: argparse.Namespace, pair: _Pair) -> None:
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


def _flax_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """The Flax model of ``convert`` and the shapes of its variables (``jax.eval_shape``: nothing allocated)."""
    if args.flax is None:
        import flax_impl

        model = flax_impl.SeqMLP(hidden=args.hidden, out=args.out)
    else:
        from ._user_code import load_object

        model = load_object(args.flax, "--flax")
    copies = 4 if args.check else 2  # source, converted (, read back, the port for the check)
    return model, _init(model, args.in_features, args.seed, shapes_only=True, copies=copies)


class _NotEquivalentError(Exception):
    """The converted checkpoint does not compute what the source does: the destination is not replaced."""


def run_convert(args: argparse.Namespace) -> int:
    """``flax2torch convert SRC DST``: Flax checkpoint <-> torch checkpoint, checked for equivalence in a
    temporary beside DST; DST is replaced only when both the conversion and the check succeed."""
    from pathlib import Path

    from ..io._atomic import atomic_output, stage
    from ..io._files import FLAX_FORMATS, checkpoint_format, replaceable
    from ..io._preflight import require_seed, require_widths

    source_format, destination_format = checkpoint_format(args.source), checkpoint_format(args.destination)
    if (source_format in FLAX_FORMATS) == (destination_format in FLAX_FORMATS):
        raise InvalidArgumentError(
            f"convert goes between a Flax file (.msgpack, Orbax folder) and a torch file (.safetensors, .pt); "
            f"got {source_format} -> {destination_format}"
        )
    require_seed(args.seed)
    if args.flax is None:
        _seed_model_defaults(args)
        require_widths(args.in_features, args.hidden, args.out)
    elif args.hidden is not None or args.out is not None:
        raise InvalidArgumentError("--hidden and --out size the seed MLP; with --flax the model gives its widths")
    else:
        _require_in_features(args.in_features)
    model, target = _flax_model(args)
    destination = Path(args.destination)
    try:
        with atomic_output(
            destination,
            force=args.force,
            directory=destination_format == "orbax",
            may_replace=replaceable(destination_format),
            protect=(args.source,),
        ) as temporary:
            summary = _convert_into(args, model, target, temporary, source_format, destination_format)
            stage("written")
            if summary is not None and not summary.startswith("check: EQUIVALENT"):
                raise _NotEquivalentError(summary)
    except _NotEquivalentError as e:
        print(f"{e}; {args.destination} was not written")
        return EXIT_MISMATCH
    print(f"wrote {args.destination} ({destination_format}) from {args.source} ({source_format})")
    if summary is not None:
        print(summary)
    return EXIT_MATCH


def _convert_into(
    args: argparse.Namespace, model: Any, target: Any, temporary: Any, source_format: str, fmt: Any
) -> str | None:
    """Convert SRC into ``temporary``, read it back and check it; the check's line (None with ``--no-check``)."""
    from pathlib import Path

    from ..convert._convert import from_state_dict, to_state_dict, torch_module_for
    from ..io._files import FLAX_FORMATS, load_checkpoint, read_checkpoint, write_checkpoint

    label = Path(f"{args.destination} (converted from {args.source})")  # names the staged temporary
    if source_format in FLAX_FORMATS:
        variables = load_checkpoint(args.source, target, strict=args.strict)
        write_checkpoint(to_state_dict(model, variables), fmt, temporary, label)
        written = _read_back(read_checkpoint, temporary, fmt, None, label=label) if args.check else None
    elif source_format == "safetensors" and fmt == "msgpack":
        from ..io._stream import write_stream

        write_stream(args.source, temporary, model, target, strict=args.strict)
        variables = _read_back(read_checkpoint, temporary, fmt, target, label=label) if args.check else None
        written = _read_back(load_checkpoint, args.source) if args.check else None
    else:
        written = load_checkpoint(args.source, strict=args.strict)
        write_checkpoint(from_state_dict(model, target, written), fmt, temporary, label)
        variables = _read_back(read_checkpoint, temporary, fmt, target, label=label)
    if not args.check:
        return None
    from ..check._check import check_equivalence

    progress.step("checking the written checkpoint against the Flax model")
    assert written is not None  # read whenever the check runs
    port = torch_module_for(model, variables, written)
    report = check_equivalence(model, variables, port, seed=args.seed, n_inputs=8, grads=False)
    if report.ok:
        worst = max(row.end_to_end.worst_ratio for row in report.layers)
        return f"check: EQUIVALENT on 8 random inputs (largest err/tol {worst:.2g})"
    divergence = report.first_divergence
    where = f" at position {divergence.index} ({divergence.kind}): {divergence.hint}" if divergence else ""
    return f"check: NOT EQUIVALENT{where}"


def _read_back(load: Any, *args: Any, **kwargs: Any) -> Any:
    """Read a file this command has already read or written: its NaN/Inf were reported once already."""
    from ..io._files import NonFiniteWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteWarning)
        return load(*args, **kwargs)


def run_export(args: argparse.Namespace) -> int:
    """``flax2torch export --flax M:A --input-shape S OUT_DIR``: any Flax model as plain torch code
    (``OUT_DIR/model.py``, torch only) and its weights (``OUT_DIR/weights.safetensors``). The files are
    written in a staging folder, imported there on their own and checked; OUT_DIR appears only after."""
    from pathlib import Path

    from .._errors import NotEquivalentError
    from ..convert._export import export_class_name, load_export, write_export
    from ..convert._native import native_module, verify
    from ..io._atomic import atomic_output, stage
    from ..io._preflight import require_seed
    from ._user_code import contained, load_object

    require_seed(args.seed)
    model = load_object(args.flax, "--flax")
    if not is_model(model):
        raise InvalidArgumentError(f"--flax {args.flax}: not a Flax module (linen or NNX)")
    inputs, variables = _inputs_and_variables(args, model, args.seed)
    progress.step(f"tracing {type(model).__name__} into torch code")
    with contained(f"cannot convert {type(model).__name__}", "to_torch"):
        module = native_module(model, variables, inputs)  # a chain too: the export is always the traced code
    class_name = export_class_name(type(model).__name__)
    destination = Path(args.destination)
    user_files = _user_files(args.flax)
    try:
        with atomic_output(
            destination, force=args.force, directory=True, may_replace=_replaceable_export, protect=user_files
        ) as folder:
            folder.mkdir()
            progress.step("writing model.py and weights.safetensors")
            source, weights = write_export(module, class_name, folder)
            stage("written")
            if args.check:
                progress.step("importing the written file on its own and checking it against Flax")
                verify(model, variables, load_export(source, weights, class_name), inputs)
    except NotEquivalentError as e:
        print(f"{e}\n{args.destination} was not written")
        return EXIT_MISMATCH
    print(
        f"wrote {destination / 'model.py'} (class {class_name}, torch only) and {destination / 'weights.safetensors'}"
    )
    if args.check:
        print("check: EQUIVALENT (the exported file, imported on its own, against the Flax model: calls and gradients)")
    return EXIT_MATCH


def _replaceable_export(path: Any) -> None:
    """``--force`` replaces an earlier export only: a folder as ``export`` wrote it, unchanged since (its manifest)."""
    from ..convert._export import unchanged_export
    from ..io._atomic import OutputRefusedError

    reason = unchanged_export(path)
    if reason is not None:
        raise OutputRefusedError(
            f"{path}: not an export folder as flax2torch export left it ({reason}); not replaced: remove it yourself "
            "or name another destination"
        )


def _require_own_page(path: str) -> None:
    """Refuse, before the check runs, an ``--html`` path that exists and is not a page the report wrote."""
    from ..check._html import may_write_page

    if not may_write_page(path):
        raise InvalidArgumentError(
            f"--html {path}: exists and is not a report flax-torch-bridge wrote; remove it or name another file"
        )


def _user_files(spec: str) -> list[str]:
    """The files of the user's ``--flax`` module and of the packages above it: no output may replace them."""
    parts = spec.partition(":")[0].split(".")
    found = []
    for depth in range(len(parts), 0, -1):  # the module itself first
        module = sys.modules.get(".".join(parts[:depth]))
        file = getattr(module, "__file__", None)
        if isinstance(file, str):
            found.append(file)
    return found


def run_golden(args: argparse.Namespace) -> int:
    """``flax2torch golden OUT.safetensors``: the seed model's variables, inputs and both outputs, with versions."""
    import flax
    import jax
    import torch

    from .._tensors import to_numpy, to_tensor
    from ..convert._convert import to_state_dict
    from ..convert._seed_model import seed_models
    from ..io._atomic import atomic_output
    from ..io._files import replaceable
    from ..io._preflight import mlp_check_bytes, require_memory, require_seed, require_widths

    if not args.destination.lower().endswith(".safetensors"):
        raise InvalidArgumentError(f"{args.destination}: golden writes a .safetensors file; name it OUT.safetensors")
    require_seed(args.seed)
    require_widths(args.in_features, args.hidden, args.out)
    widths = f"widths {args.in_features}-{args.hidden}-{args.hidden}-{args.out}"
    needed = mlp_check_bytes(args.n_inputs, args.in_features, args.hidden, args.out)
    require_memory(needed, f"golden vectors of {args.n_inputs} inputs at {widths}", "use fewer --n-inputs")
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
        "format": "pt",
        "jax": jax.__version__,
        "flax": flax.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "seed": str(args.seed),
        "widths": f"{args.in_features}-{args.hidden}-{args.hidden}-{args.out}",
    }
    from safetensors.torch import save_file

    with atomic_output(args.destination, force=args.force, may_replace=replaceable("safetensors")) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)  # its own temporary lands in the staging folder
    largest = float(np.abs(to_numpy(tensors["outputs/flax"]) - to_numpy(torch_output)).max())
    print(f"wrote {args.destination}: {len(tensors)} tensors; flax vs torch max abs difference {largest:.3e}")
    return EXIT_MATCH


COMMANDS = {
    "check": run_check,
    "convert": run_convert,
    "export": run_export,
    "golden": run_golden,
    "convert-hf": run_convert_hf,
}
