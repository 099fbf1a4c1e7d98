"""``flax2torch convert SRC DST``: a Flax checkpoint <-> a torch checkpoint, checked in a temporary beside DST."""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from .. import _progress as progress
from .._errors import InvalidArgumentError
from ._exit import EXIT_MATCH, EXIT_MISMATCH
from ._pair import flax_model_and_shapes, require_model_widths


class _NotEquivalentError(Exception):
    """The converted checkpoint does not compute what the source does: the destination is not replaced."""


def run_convert(args: argparse.Namespace) -> int:
    """``flax2torch convert SRC DST``: Flax checkpoint <-> torch checkpoint, checked for equivalence in a
    temporary beside DST; DST is replaced only when both the conversion and the check succeed."""
    from pathlib import Path

    from .._validate import require_seed
    from ..io import FLAX_FORMATS, atomic_output, checkpoint_format, replaceable, stage

    source_format, destination_format = checkpoint_format(args.source), checkpoint_format(args.destination)
    if (source_format in FLAX_FORMATS) == (destination_format in FLAX_FORMATS):
        raise InvalidArgumentError(
            f"convert goes between a Flax file (.msgpack, Orbax folder) and a torch file (.safetensors, .pt); "
            f"got {source_format} -> {destination_format}"
        )
    require_seed(args.seed, "--seed")
    require_model_widths(args)
    model, target = flax_model_and_shapes(args)
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

    from ..convert import from_state_dict, to_state_dict, torch_module_for
    from ..io import FLAX_FORMATS, load_checkpoint, read_checkpoint, write_checkpoint

    label = Path(f"{args.destination} (converted from {args.source})")  # names the staged temporary
    if source_format in FLAX_FORMATS:
        variables = load_checkpoint(args.source, target, strict=args.strict)
        write_checkpoint(to_state_dict(model, variables), fmt, temporary, label)
        written = _read_back(read_checkpoint, temporary, fmt, None, label=label) if args.check else None
    elif source_format == "safetensors" and fmt == "msgpack":
        from ..io import write_stream

        write_stream(args.source, temporary, model, target, strict=args.strict)
        variables = _read_back(read_checkpoint, temporary, fmt, target, label=label) if args.check else None
        written = _read_back(load_checkpoint, args.source) if args.check else None
    else:
        written = load_checkpoint(args.source, strict=args.strict)
        write_checkpoint(from_state_dict(model, target, written), fmt, temporary, label)
        variables = _read_back(read_checkpoint, temporary, fmt, target, label=label)
    if not args.check:
        return None
    from ..check import check_equivalence

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
    from .._errors import NonFiniteWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteWarning)
        return load(*args, **kwargs)
