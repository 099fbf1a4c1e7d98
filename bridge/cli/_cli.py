"""The ``flax2torch`` command line (also ``python -m bridge``).

Exit codes: 0 the models match, 1 they do not, 2 a usage error or a bad input (one line, no traceback;
user code that exits or is interrupted while imported or built too), 3 an internal error (one line;
FLAX2TORCH_TRACEBACK=1 shows the traceback), 124 out of time (``--timeout``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import NoReturn

from ._exit import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TIMEOUT, EXIT_USAGE


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
    check.add_argument(
        "--seed", type=int, default=0, help="PRNG seed of the Flax init, the first with --seeds (default 0)"
    )
    check.add_argument(
        "--seeds",
        type=_positive,
        default=1,
        metavar="N",
        help="check N seeds from --seed on (a chain vectorised, your own model with --input-shape one seed after "
        "another): every layer's output for every seed, and the full report (gradients included) for the first "
        "failing seed, else --seed; the inputs are --seed's",
    )
    seed_model = check.add_argument_group("the seed model (the default)")
    seed_model.add_argument("--in-features", type=int, default=3, help="input width (default 3; x = [1, 0, 0, ...])")
    seed_model.add_argument("--hidden", type=int, help="width of both hidden layers (default 4)")
    seed_model.add_argument("--out", type=int, help="output width (default 2)")
    own = check.add_argument_group("your own model and port")
    own.add_argument("--flax", metavar="MODULE:ATTR", help="a Flax model (or a factory of one)")
    own.add_argument("--torch", metavar="MODULE:ATTR", help="its torch port (default: converted, for a chain)")
    own.add_argument("--params", metavar="FILE", help="saved Flax variables (.msgpack) instead of a seeded init")
    own.add_argument("--keep-torch-weights", action="store_true", help="do not load the Flax weights into --torch")
    own.add_argument(
        "--input-shape",
        action="append",
        metavar="[NAME=]SHAPE",
        help="an input of this shape (4,28,28,1), for any model (not only a chain); repeat for several positional "
        "inputs, NAME=SHAPE for a keyword input",
    )
    own.add_argument("--input-dtype", default="float32", help="dtype of the --input-shape inputs (default float32)")
    own.add_argument(
        "--input-range",
        metavar="LOW,HIGH",
        help="integer inputs drawn from [LOW, HIGH) (default 0,2); floats are normal",
    )
    own.add_argument(
        "--mapping", metavar="FILE.json", help='pairs of Flax and torch paths, {"Block_0/*": "blocks.0.*"}'
    )
    own.add_argument(
        "--channels-first", action="store_true", help="the port takes NCHW where Flax takes NHWC (inputs moved)"
    )
    how = check.add_argument_group("how to compare")
    how.add_argument("--dtype", choices=["native", "float32", "float64", "bfloat16"], default="native")
    how.add_argument("--n-inputs", type=_positive, default=32, help="random input rows per check (default 32)")
    how.add_argument("--rtol", type=float, help="fixed relative tolerance instead of the derived one")
    how.add_argument("--atol", type=float, help="fixed absolute tolerance instead of the derived one")
    how.add_argument("--grads", action=argparse.BooleanOptionalAction, default=True, help="compare gradients too")
    out = check.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the report as JSON")
    out.add_argument("--plot", metavar="FILE.png", help="plot per-layer error against tolerance (needs matplotlib)")
    out.add_argument(
        "--html",
        metavar="FILE.html",
        help="write the report as one self-contained page: the module tree coloured by err/tol, the first "
        "divergence and its hint, the gradients (replaces only a page it wrote)",
    )
    convert = commands.add_parser(
        "convert",
        help="convert a checkpoint between Flax (.msgpack, Orbax folder) and torch (.safetensors, .pt)",
        description="Convert SRC to DST; the direction follows from the suffixes. The Flax model gives the "
        "tree: the seed MLP (--in-features/--hidden/--out) or --flax MODULE:ATTR.",
    )
    convert.add_argument("source", metavar="SRC")
    convert.add_argument("destination", metavar="DST")
    _model_options(convert)
    convert.add_argument(
        "--force", action="store_true", help="replace DST if it exists and is a checkpoint of DST's format"
    )
    convert.add_argument("--strict", action="store_true", help="refuse NaN/Inf weights instead of warning")
    convert.add_argument("--no-check", dest="check", action="store_false", help="skip the equivalence check after")
    export = commands.add_parser(
        "export",
        help="convert any Flax model into a standalone PyTorch source file and its weights",
        description="Trace the Flax model on inputs of --input-shape, translate it into torch code and write "
        "OUT_DIR/model.py (one class named after the model, imports torch only) and OUT_DIR/weights.safetensors; "
        "the written file is imported on its own and checked against the Flax model before OUT_DIR appears.",
    )
    export.add_argument("destination", metavar="OUT_DIR")
    export.add_argument("--flax", metavar="MODULE:ATTR", required=True, help="the Flax model (or a factory of one)")
    export.add_argument("--params", metavar="FILE", help="saved Flax variables (.msgpack) instead of a seeded init")
    export.add_argument("--seed", type=int, default=0, help="seed of the init and of the example inputs (default 0)")
    export.add_argument(
        "--input-shape",
        action="append",
        required=True,
        metavar="[NAME=]SHAPE",
        help="an example input of this shape (2,28,28,1); repeat for several, NAME=SHAPE for keyword inputs",
    )
    export.add_argument("--input-dtype", default="float32", help="dtype of the example inputs (default float32)")
    export.add_argument("--input-range", metavar="LOW,HIGH", help="integer inputs drawn from [LOW, HIGH)")
    export.add_argument("--force", action="store_true", help="replace OUT_DIR if it is an earlier export")
    export.add_argument("--no-check", dest="check", action="store_false", help="skip the equivalence check")
    golden = commands.add_parser(
        "golden",
        help="write the seed model's variables, inputs and both outputs to one .safetensors file",
        description="Golden vectors: variables, inputs and both frameworks' outputs, with library versions.",
    )
    golden.add_argument("destination", metavar="OUT.safetensors")
    golden.add_argument("--seed", type=int, default=0)
    golden.add_argument("--in-features", type=int, default=3)
    golden.add_argument("--hidden", type=int, default=4)
    golden.add_argument("--out", type=int, default=2)
    golden.add_argument("--n-inputs", type=_positive, default=8)
    golden.add_argument("--force", action="store_true", help="replace the file if it exists and is a .safetensors file")
    from ._convert_hf import add_parser as add_convert_hf

    convert_hf = add_convert_hf(commands)
    for command in (check, convert, export, golden, convert_hf):
        command.add_argument("--quiet", action="store_true", help="no progress line on a terminal")
        command.add_argument(
            "--timeout",
            type=_seconds,
            metavar="SECONDS",
            help="give up after SECONDS (exit 124, nothing written); stops Python code, the user's included, "
            "at its next line, and a compiled computation when it returns",
        )
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flax", metavar="MODULE:ATTR", help="the Flax model (default: the seed MLP)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the init that gives the tree (default 0)")
    parser.add_argument("--in-features", type=int, default=3, help="input width (default 3)")
    parser.add_argument("--hidden", type=int, help="seed MLP hidden width (default 4)")
    parser.add_argument("--out", type=int, help="seed MLP output width (default 2)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < 1e8:  # beyond that setitimer overflows; nobody waits three years
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


class CommandTimeout(BaseException):
    """``--timeout`` ran out (a BaseException, as KeyboardInterrupt: user code's ``except Exception`` lets it pass)."""


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``CommandTimeout`` in the main thread once ``seconds`` have passed (SIGALRM; POSIX only)."""
    if seconds is None:
        yield
        return
    from .._errors import InvalidArgumentError

    if not hasattr(signal, "setitimer"):
        raise InvalidArgumentError("--timeout needs SIGALRM, which this platform lacks; leave it out")

    def expire(signum: int, frame: object) -> None:
        raise CommandTimeout

    try:
        previous = signal.signal(signal.SIGALRM, expire)
    except ValueError:  # main() called from a thread other than the main one
        raise InvalidArgumentError("--timeout works only in the main thread; leave it out") from None
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _progress_line(args: argparse.Namespace) -> Iterator[None]:
    """On a terminal, one transient status line on stderr saying what the command is doing (``rich``); nothing
    with ``--json`` or ``--quiet``, or when stderr is a file or a pipe."""
    if getattr(args, "json", False) or args.quiet or not sys.stderr.isatty():
        yield
        return
    from rich.console import Console
    from rich.live import Live
    from rich.spinner import Spinner

    from .._progress import show_progress

    prefix = f"flax2torch {args.command}: "
    spinner = Spinner("dots", prefix + "starting")
    # stdout stays stdout (a report piped to a file must not move to the terminal's stderr)
    live = Live(spinner, console=Console(file=sys.stderr), transient=True, redirect_stdout=False, redirect_stderr=False)
    with live, show_progress(lambda line: spinner.update(text=prefix + line)):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flax2torch`` with ``argv`` (default ``sys.argv[1:]``) and return its exit code."""
    args = build_parser().parse_args(argv)
    from .._errors import BridgeError, LeftoverWarning, first_line
    from ._user_code import UserExitError, libraries_first, no_hard_exit

    prefix = f"flax2torch {args.command}"
    caught: list[warnings.WarningMessage] = []
    timeout = getattr(args, "timeout", None)
    try:
        with _time_limit(timeout):
            # python -m puts the current folder first: the libraries must not come from there
            checkpoints = {"convert": ("source", "destination"), "check": ("params",), "export": ("params",)}.get(
                args.command, ()
            )
            plot = ("matplotlib.pyplot",) if getattr(args, "plot", None) else ()
            if plot:
                os.environ["MPLBACKEND"] = "Agg"  # a PNG file, never a window
            libraries_first([getattr(args, name) for name in checkpoints], plot)
            from .._errors import NonFiniteWarning
            from ._commands import COMMANDS, use_compile_cache

            use_compile_cache()
            args.json_out = sys.stdout  # --json: the document alone on stdout, any other output on stderr
            json_only = getattr(args, "json", False)
            quiet_stdout = contextlib.redirect_stdout(sys.stderr) if json_only else contextlib.nullcontext()
            with warnings.catch_warnings(record=True) as caught, no_hard_exit(), quiet_stdout, _progress_line(args):
                warnings.simplefilter("always", NonFiniteWarning)
                warnings.simplefilter("always", LeftoverWarning)
                code = COMMANDS[args.command](args)
    except CommandTimeout:
        print(
            f"{prefix}: out of time after --timeout {timeout:g} s; no verdict (nothing was replaced)", file=sys.stderr
        )
        return EXIT_TIMEOUT
    except BridgeError as e:
        _print_warnings(prefix, [w for w in caught if issubclass(w.category, LeftoverWarning)])
        print(f"{prefix}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (SystemExit, UserExitError) as e:  # only user code exits while a command runs
        how = f"sys.exit({e.code!r})" if isinstance(e, SystemExit) else f"os._exit({e})"
        print(f"{prefix}: error: the model's code called {how} during the command; no verdict", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted; no verdict (nothing was replaced)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug of ours: still one line, with a way to get the traceback
        if os.environ.get("FLAX2TORCH_TRACEBACK"):
            raise
        print(
            f"{prefix}: internal error: {type(e).__name__}: {first_line(e)} "
            "(rerun with FLAX2TORCH_TRACEBACK=1 and report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    _print_warnings(prefix, caught)
    return code


def _print_warnings(prefix: str, caught: list[warnings.WarningMessage]) -> None:
    from .._errors import LeftoverWarning, NonFiniteWarning

    for warning in caught:
        if issubclass(warning.category, NonFiniteWarning):
            print(f"{prefix}: warning: {warning.message}", file=sys.stderr)
        elif issubclass(warning.category, LeftoverWarning):
            print(f"{prefix}: note: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def entry_point() -> NoReturn:
    """Console-script entry: exit with ``main``'s code."""
    sys.exit(main())
