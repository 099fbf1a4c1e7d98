"""flax-torch-bridge: convert Flax models to PyTorch and back, and prove that both compute the same function."""

from . import rules as rules
from ._convert import load_into as load_into
from ._convert import to_flax as to_flax
from ._convert import to_state_dict as to_state_dict
from ._convert import to_torch as to_torch
from ._errors import BridgeError as BridgeError
from ._errors import InvalidArgumentError as InvalidArgumentError
from ._errors import LayerMismatchError as LayerMismatchError
from ._errors import RuleRegistrationError as RuleRegistrationError
from ._errors import UnknownLayerError as UnknownLayerError
from ._errors import UnsupportedModelError as UnsupportedModelError
from ._seed_model import run_torch as run_torch
from .rules import LayerRule as LayerRule
from .rules import ParamMap as ParamMap
from .rules import register as register_rule

__all__ = [
    "BridgeError",
    "InvalidArgumentError",
    "LayerMismatchError",
    "LayerRule",
    "ParamMap",
    "RuleRegistrationError",
    "UnknownLayerError",
    "UnsupportedModelError",
    "load_into",
    "register_rule",
    "rules",
    "run_torch",
    "to_flax",
    "to_state_dict",
    "to_torch",
]
