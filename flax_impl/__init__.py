"""Reference Flax models: the source of truth that every port is checked against."""

from ._args import InvalidArgumentError as InvalidArgumentError
from ._args import RunArguments as RunArguments
from ._args import validate_run_arguments as validate_run_arguments
from ._seq_mlp import SeqMLP as SeqMLP
from ._seq_mlp import init_variables as init_variables
from ._seq_mlp import run as run

__all__ = [
    "InvalidArgumentError",
    "RunArguments",
    "SeqMLP",
    "init_variables",
    "run",
    "validate_run_arguments",
]
