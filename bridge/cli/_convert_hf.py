"""``flax2torch convert-hf FLAX_DIR OUT_DIR``: a Hugging Face Flax checkpoint folder as the PyTorch folder that
transformers' PyTorch class loads, checked against the Flax model before OUT_DIR appears."""

from __future__ import annotations

import argparse

from ._exit import EXIT_MATCH, EXIT_MISMATCH


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """The ``convert-hf`` subcommand's options."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "convert-hf",
        help="convert a Hugging Face Flax checkpoint folder into a PyTorch one (model.safetensors) and check it",
        description="Read FLAX_DIR (config.json and flax_model.msgpack, or its shards with "
        "flax_model.msgpack.index.json) one tensor at a time and write OUT_DIR: safetensors shards with "
        "model.safetensors.index.json, config and tokenizer files. transformers' PyTorch class loads it (no missing "
        "or unexpected key) and it is compared with the Flax model before OUT_DIR appears. Needs transformers 4.57.x.",
    )
    parser.add_argument("source", metavar="FLAX_DIR")
    parser.add_argument("destination", metavar="OUT_DIR")
    parser.add_argument("--architecture", help="the PyTorch class (BertForMaskedLM) when config.json names none")
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it is an earlier convert-hf output")
    parser.add_argument("--strict", action="store_true", help="refuse NaN/Inf weights instead of warning")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip loading and comparing")
    return parser


def run_convert_hf(args: argparse.Namespace) -> int:
    """Convert, print what was written and the check's verdict; exit 1 (nothing written) when not equivalent."""
    from .._errors import NotEquivalentError
    from ..hf import convert_hf_checkpoint

    try:
        result = convert_hf_checkpoint(
            args.source,
            args.destination,
            check=args.check,
            force=args.force,
            architecture=args.architecture,
            strict=args.strict,
        )
    except NotEquivalentError as e:
        print(e)
        return EXIT_MISMATCH
    shards = f"{len(result.shards)} shards" if len(result.shards) > 1 else "1 file"
    print(
        f"wrote {result.destination}: {result.architecture}, {result.tensors} tensors "
        f"({result.total_bytes / 2**20:.1f} MiB) in {shards}"
    )
    if result.tied:
        print(f"tied: {', '.join(sorted(result.tied))} (transformers ties them to the written tensors on load)")
    if result.report is None:
        print("check: skipped (--no-check): nothing proves the PyTorch model computes what the Flax one does")
    else:
        worst = max((row.end_to_end.worst_ratio for row in result.report.layers), default=0.0)
        placed = len(result.by_name)
        confirmed = f"; it confirms the {placed} tensor{'s' * (placed != 1)} placed by name" if placed else ""
        print(f"check: EQUIVALENT (largest err/tol {worst:.2g}){confirmed}")
    return EXIT_MATCH
