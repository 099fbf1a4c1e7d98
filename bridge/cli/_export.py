"""``flax2torch export``: a Flax model as a standalone torch module (code and weights), checked before it lands."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import _progress as progress
from .._errors import InvalidArgumentError
from ._exit import EXIT_MATCH, EXIT_MISMATCH
from ._pair import inputs_and_variables
from ._user_code import is_model


def run_export(args: argparse.Namespace) -> int:
    """``flax2torch export --flax M:A --input-shape S OUT_DIR``: any Flax model as plain torch code
    (``OUT_DIR/model.py``, torch only) and its weights (``OUT_DIR/weights.safetensors``). The files are
    written in a staging folder, imported there on their own and checked; OUT_DIR appears only after."""
    from pathlib import Path

    from .._errors import NotEquivalentError
    from .._validate import require_seed
    from ..check import verify
    from ..convert import export_class_name, load_export, native_module, write_export
    from ..io import atomic_output, stage
    from ._user_code import contained, load_object

    require_seed(args.seed, "--seed")
    model = load_object(args.flax, "--flax")
    if not is_model(model):
        raise InvalidArgumentError(f"--flax {args.flax}: not a Flax module (linen or NNX)")
    inputs, variables = inputs_and_variables(args, model, args.seed)
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
    from .._errors import OutputRefusedError
    from ..convert import unchanged_export

    reason = unchanged_export(path)
    if reason is not None:
        raise OutputRefusedError(
            f"{path}: not an export folder as flax2torch export left it ({reason}); not replaced: remove it yourself "
            "or name another destination"
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
