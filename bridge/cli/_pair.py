"""What a subcommand works on, built from its options: the Flax model and variables (the seed's MLP, or the
user's ``--flax``/``--params``), the torch port, and the inputs, each refused early when it would not fit."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NamedTuple

import numpy as np

from .._errors import InvalidArgumentError, LayerMismatchError
from .._flax_model import is_nnx

# one weight of the seed MLP at most: larger ones are refused rather than risk an abort inside XLA (32-bit
# indices; which sizes abort was not measured here, and such widths do not fit a check on these machines anyway)
MAX_ELEMENTS = 2**31 - 1


def require_widths(in_features: int, hidden: int, out: int) -> None:
    """The seed MLP's widths: each >= 1 (messages as ``flax_impl``'s), and no weight past ``MAX_ELEMENTS``."""
    if in_features < 1:
        raise InvalidArgumentError(f"x must have at least one feature: --in-features is {in_features}")
    for name, value in (("hidden", hidden), ("out", out)):
        if value < 1:
            raise InvalidArgumentError(f"{name} must be >= 1, got {value}")
    for rows, columns in ((in_features, hidden), (hidden, hidden), (hidden, out)):
        if rows * columns > MAX_ELEMENTS:
            raise InvalidArgumentError(
                f"a {rows} x {columns} weight has {rows * columns} elements, more than the {MAX_ELEMENTS} "
                "the seed MLP supports; use smaller --in-features/--hidden/--out"
            )


def mlp_check_bytes(n_inputs: int, in_features: int, hidden: int, out: int, seeds: int = 1, itemsize: int = 4) -> int:
    """Memory of checking the seed MLP: parameters and activations on both sides, both comparisons,
    gradients and float64 copies for the error bounds (a factor of 8 over one copy of each)."""
    params = in_features * hidden + hidden * hidden + hidden * out + 2 * hidden + out
    activations = n_inputs * (in_features + 4 * hidden + 2 * out)
    inputs = n_inputs * in_features * 8  # drawn in float64, then cast
    return 8 * itemsize * seeds * (params + activations) + inputs


class Pair(NamedTuple):
    """One check to run: the Flax model and variables, the torch port, the inputs (None: random), and
    the user's mapping of paths (trees)."""

    model: Any
    variables: Any
    torch_module: Any
    inputs: Any
    mapping: Any = None


def print_json(args: argparse.Namespace, payload: Any) -> None:
    """Print ``--json``'s one document on the real stdout (``main`` sends everything else, user code's prints
    included, to stderr while the command runs, so that stdout always parses)."""
    print(json.dumps(payload), file=getattr(args, "json_out", None) or sys.stdout)


NEEDS_FLAX = {"--torch": "claims to port", "--params": "holds the variables of"}


def require_model_widths(args: argparse.Namespace) -> None:
    """The seed MLP's widths (``--hidden 4 --out 2`` by default), or, with ``--flax``, only ``--in-features``: the
    model gives the others."""
    if args.flax is None:
        args.hidden = 4 if args.hidden is None else args.hidden
        args.out = 2 if args.out is None else args.out
        require_widths(args.in_features, args.hidden, args.out)
    elif args.hidden is not None or args.out is not None:
        raise InvalidArgumentError("--hidden and --out size the seed MLP; with --flax the model gives its widths")
    elif args.in_features < 1:
        raise InvalidArgumentError(
            f"--in-features must be >= 1 (the width of the model's input), got {args.in_features}"
        )


def require_report_path(path: str, option: str, suffixes: tuple[str, ...]) -> None:
    """Refuse, before the check runs, a ``--plot``/``--html`` path the report could not be written to, or must not
    replace: no name, another file type, a missing or read-only folder, a folder, a link, a file it did not write."""
    from pathlib import Path

    from ..check import may_write_report

    target = Path(path)
    if not path or target.suffix.lower() not in suffixes:
        raise InvalidArgumentError(f"{option} {path!r}: name a {' or '.join(suffixes)} file")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InvalidArgumentError(f"{option} {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"{option} {path}: cannot write in the folder {folder} (permission denied)")
    if target.is_symlink():
        raise InvalidArgumentError(f"{option} {path}: is a symbolic link; name the file itself or another")
    if target.is_dir():
        raise InvalidArgumentError(f"{option} {path}: is a folder; name a {suffixes[0]} file")
    if not may_write_report(target):
        raise InvalidArgumentError(
            f"{option} {path}: exists and is not a report flax-torch-bridge wrote; remove it or name another file"
        )


def build_pair(args: argparse.Namespace, seed: int) -> Pair:
    """The models of one check: the seed problem by default, or the user's ``--flax``/``--torch``."""
    from ..convert import load_into, to_torch

    if args.flax is None:
        from ..convert import seed_models

        x = np.zeros(args.in_features, np.float32)
        x[:1] = 1.0
        models = seed_models(seed, x, args.hidden, args.out)
        rows = np.random.default_rng(seed).standard_normal((max(args.n_inputs - 1, 0), args.in_features))
        return Pair(models.model, models.variables, models.torch_module, np.vstack([x, rows.astype(np.float32)]))
    from ._user_code import load_object

    # your own model: a chain's rows drawn by the check, else inputs drawn from --input-shape (model.init on them);
    # the port filled by structure unless --keep-torch-weights; without --torch, the model converted (to_torch)
    model = load_object(args.flax, "--flax")
    inputs = None
    if args.input_shape:
        inputs, variables = inputs_and_variables(args, model, seed)
    else:
        variables = _variables(model, args, seed)
    mapping = _mapping(args.mapping)
    if args.torch is None:
        port_options = {"--mapping": args.mapping, "--channels-first": args.channels_first}
        if given := [option for option, value in port_options.items() if value]:
            verb = "describes" if len(given) == 1 else "describe"
            raise InvalidArgumentError(f"{' and '.join(given)} {verb} the torch port: give --torch MODULE:ATTR")
        return Pair(model, variables, to_torch(model, variables, inputs), inputs, None)
    port = load_object(args.torch, "--torch")
    if not args.keep_torch_weights:
        try:
            load_into(model, variables, port, inputs=inputs, channels_last=not args.channels_first, mapping=mapping)
        except LayerMismatchError as e:
            raise PortMismatchError(f"the Flax weights do not fit the port: {e}") from e
    return Pair(model, variables, port.eval(), inputs, mapping)


def inputs_and_variables(args: argparse.Namespace, model: Any, seed: int) -> tuple[Any, Any]:
    """The ``--input-shape`` inputs and the variables of ``model.init`` on them, or of ``--params``."""
    import jax

    from ..io import require_memory
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
        from ..io import read_flax_variables

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
    from ..io import require_memory

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


class PortMismatchError(LayerMismatchError):
    """The port's layers do not fit the Flax model's weights: a verdict (exit 1), not a usage error."""


def init_variables(model: Any, in_features: int, seed: int, *, shapes_only: bool = False, copies: int = 8) -> Any:
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
    from ..io import flatten_variables, require_memory

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
    variables = init_variables(model, args.in_features, seed)
    if args.params is None:
        return variables
    from ..io import read_flax_variables

    return read_flax_variables(args.params, variables)


def flax_model_and_shapes(args: argparse.Namespace) -> tuple[Any, Any]:
    """The Flax model of ``convert`` and the shapes of its variables (``jax.eval_shape``: nothing allocated)."""
    if args.flax is None:
        import flax_impl

        model = flax_impl.SeqMLP(hidden=args.hidden, out=args.out)
    else:
        from ._user_code import load_object

        model = load_object(args.flax, "--flax")
    copies = 4 if args.check else 2  # source, converted (, read back, the port for the check)
    return model, init_variables(model, args.in_features, args.seed, shapes_only=True, copies=copies)
