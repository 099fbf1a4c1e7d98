"""The ``flax2torch`` command line (also ``python -m bridge``).

Exit codes: 0 the models match, 1 they do not, 2 a usage error or a bad input (one line, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

EXIT_MATCH, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (and exit code 2) instead of usage plus message."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``flax2torch`` and its subcommands."""
    parser = _Parser(prog="flax2torch", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    check = commands.add_parser(
        "check",
        help="convert the seed's Flax MLP to PyTorch and compare both outputs",
        description="Build the seed problem's Flax SeqMLP, convert it to PyTorch, run both on x and compare.",
    )
    check.add_argument("--seed", type=int, default=0, help="PRNG seed of the Flax init (default 0)")
    check.add_argument("--in-features", type=int, default=3, help="input width (default 3; x = [1, 0, 0, ...])")
    check.add_argument("--hidden", type=int, default=4, help="width of both hidden layers (default 4)")
    check.add_argument("--out", type=int, default=2, help="output width (default 2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flax2torch`` with ``argv`` (default ``sys.argv[1:]``) and return its exit code."""
    args = build_parser().parse_args(argv)
    from ._errors import BridgeError  # heavy imports (jax, torch) only once the arguments are valid

    try:
        from ._commands import run_check

        return run_check(args)
    except BridgeError as e:
        print(f"flax2torch {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def entry_point() -> NoReturn:
    """Console-script entry: exit with ``main``'s code."""
    sys.exit(main())
