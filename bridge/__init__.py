"""flax-torch-bridge: convert Flax models to PyTorch and back, and prove that both compute the same function.

The public API is imported on first use (PEP 562), so that ``import bridge`` and ``flax2torch --help``
do not pay for JAX and torch until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> (module, attribute in it; None: the module itself)
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "BridgeError": ("._errors", "BridgeError"),
    "CheckpointError": ("._errors", "CheckpointError"),
    "Comparison": (".check", "Comparison"),
    "DEFAULT_RTOL_ATOL": ("._numerics", "DEFAULT_RTOL_ATOL"),
    "Divergence": (".check", "Divergence"),
    "EquivalenceReport": (".check", "EquivalenceReport"),
    "SeedSweepReport": (".check", "SeedSweepReport"),
    "TiedWeightsWarning": ("._errors", "TiedWeightsWarning"),
    "ReassignedWarning": ("._errors", "ReassignedWarning"),
    "GradientRow": (".check", "GradientRow"),
    "InvalidArgumentError": ("._errors", "InvalidArgumentError"),
    "LayerMismatchError": ("._errors", "LayerMismatchError"),
    "LayerRow": (".check", "LayerRow"),
    "LayerRule": (".rules", "LayerRule"),
    "NonFiniteWarning": ("._errors", "NonFiniteWarning"),
    "NotEquivalentError": ("._errors", "NotEquivalentError"),
    "ParamMap": (".rules", "ParamMap"),
    "RuleRegistrationError": ("._errors", "RuleRegistrationError"),
    "UnknownLayerError": ("._errors", "UnknownLayerError"),
    "UnsupportedModelError": ("._errors", "UnsupportedModelError"),
    "assert_equivalent": (".check", "assert_equivalent"),
    "check_equivalence": (".check", "check_equivalence"),
    "flatten": (".rules.conv", "flatten"),
    "from_state_dict": (".convert", "from_state_dict"),
    "load_checkpoint": (".io", "load_checkpoint"),
    "load_into": (".convert", "load_into"),
    "register_rule": (".rules", "register"),
    "rules": (".rules", None),
    "run_torch": (".convert", "run_torch"),
    "save_checkpoint": (".io", "save_checkpoint"),
    "show_progress": ("._progress", "show_progress"),
    "to_flax": (".convert", "to_flax"),
    "to_nnx": (".convert", "to_nnx"),
    "to_state_dict": (".convert", "to_state_dict"),
    "to_torch": (".check", "to_torch"),
    "torch_layers": (".torch_layers", None),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'bridge' has no attribute {name!r}") from None
    module = importlib.import_module(module_name, __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # the same names, for type checkers and editors (tests/test_package.py checks they agree)
    from . import rules as rules
    from . import torch_layers as torch_layers
    from ._errors import BridgeError as BridgeError
    from ._errors import CheckpointError as CheckpointError
    from ._errors import InvalidArgumentError as InvalidArgumentError
    from ._errors import LayerMismatchError as LayerMismatchError
    from ._errors import NonFiniteWarning as NonFiniteWarning
    from ._errors import NotEquivalentError as NotEquivalentError
    from ._errors import ReassignedWarning as ReassignedWarning
    from ._errors import RuleRegistrationError as RuleRegistrationError
    from ._errors import TiedWeightsWarning as TiedWeightsWarning
    from ._errors import UnknownLayerError as UnknownLayerError
    from ._errors import UnsupportedModelError as UnsupportedModelError
    from ._numerics import DEFAULT_RTOL_ATOL as DEFAULT_RTOL_ATOL
    from ._progress import show_progress as show_progress
    from .check import Comparison as Comparison
    from .check import Divergence as Divergence
    from .check import EquivalenceReport as EquivalenceReport
    from .check import GradientRow as GradientRow
    from .check import LayerRow as LayerRow
    from .check import SeedSweepReport as SeedSweepReport
    from .check import assert_equivalent as assert_equivalent
    from .check import check_equivalence as check_equivalence
    from .check import to_torch as to_torch
    from .convert import from_state_dict as from_state_dict
    from .convert import load_into as load_into
    from .convert import run_torch as run_torch
    from .convert import to_flax as to_flax
    from .convert import to_nnx as to_nnx
    from .convert import to_state_dict as to_state_dict
    from .io import load_checkpoint as load_checkpoint
    from .io import save_checkpoint as save_checkpoint
    from .rules import LayerRule as LayerRule
    from .rules import ParamMap as ParamMap
    from .rules import register as register_rule  # noqa: F401 (re-exported under its public name)
    from .rules.conv import flatten as flatten
