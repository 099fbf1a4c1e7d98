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
    "CheckpointError": ("._files", "CheckpointError"),
    "Comparison": ("._compare", "Comparison"),
    "DEFAULT_RTOL_ATOL": ("._numerics", "DEFAULT_RTOL_ATOL"),
    "Divergence": ("._report", "Divergence"),
    "EquivalenceReport": ("._report", "EquivalenceReport"),
    "SeedSweepReport": ("._report", "SeedSweepReport"),
    "TiedWeightsWarning": ("._errors", "TiedWeightsWarning"),
    "GradientRow": ("._report", "GradientRow"),
    "InvalidArgumentError": ("._errors", "InvalidArgumentError"),
    "LayerMismatchError": ("._errors", "LayerMismatchError"),
    "LayerRow": ("._report", "LayerRow"),
    "LayerRule": (".rules", "LayerRule"),
    "NonFiniteWarning": ("._files", "NonFiniteWarning"),
    "NotEquivalentError": ("._errors", "NotEquivalentError"),
    "ParamMap": (".rules", "ParamMap"),
    "RuleRegistrationError": ("._errors", "RuleRegistrationError"),
    "UnknownLayerError": ("._errors", "UnknownLayerError"),
    "UnsupportedModelError": ("._errors", "UnsupportedModelError"),
    "assert_equivalent": ("._check", "assert_equivalent"),
    "check_equivalence": ("._check", "check_equivalence"),
    "flatten": (".rules.conv", "flatten"),
    "from_state_dict": ("._convert", "from_state_dict"),
    "load_checkpoint": ("._files", "load_checkpoint"),
    "load_into": ("._convert", "load_into"),
    "register_rule": (".rules", "register"),
    "rules": (".rules", None),
    "run_torch": ("._seed_model", "run_torch"),
    "save_checkpoint": ("._files", "save_checkpoint"),
    "to_flax": ("._convert", "to_flax"),
    "to_nnx": ("._convert", "to_nnx"),
    "to_state_dict": ("._convert", "to_state_dict"),
    "to_torch": ("._convert", "to_torch"),
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
    from ._check import assert_equivalent as assert_equivalent
    from ._check import check_equivalence as check_equivalence
    from ._compare import Comparison as Comparison
    from ._convert import from_state_dict as from_state_dict
    from ._convert import load_into as load_into
    from ._convert import to_flax as to_flax
    from ._convert import to_nnx as to_nnx
    from ._convert import to_state_dict as to_state_dict
    from ._convert import to_torch as to_torch
    from ._errors import BridgeError as BridgeError
    from ._errors import InvalidArgumentError as InvalidArgumentError
    from ._errors import LayerMismatchError as LayerMismatchError
    from ._errors import NotEquivalentError as NotEquivalentError
    from ._errors import RuleRegistrationError as RuleRegistrationError
    from ._errors import TiedWeightsWarning as TiedWeightsWarning
    from ._errors import UnknownLayerError as UnknownLayerError
    from ._errors import UnsupportedModelError as UnsupportedModelError
    from ._files import CheckpointError as CheckpointError
    from ._files import NonFiniteWarning as NonFiniteWarning
    from ._files import load_checkpoint as load_checkpoint
    from ._files import save_checkpoint as save_checkpoint
    from ._numerics import DEFAULT_RTOL_ATOL as DEFAULT_RTOL_ATOL
    from ._report import Divergence as Divergence
    from ._report import EquivalenceReport as EquivalenceReport
    from ._report import GradientRow as GradientRow
    from ._report import LayerRow as LayerRow
    from ._report import SeedSweepReport as SeedSweepReport
    from ._seed_model import run_torch as run_torch
    from .rules import LayerRule as LayerRule
    from .rules import ParamMap as ParamMap
    from .rules import register as register_rule  # noqa: F401 (re-exported under its public name)
    from .rules.conv import flatten as flatten
