"""flax-torch-bridge: convert Flax models to PyTorch and back, and prove that both compute the same function."""

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
from ._errors import RuleRegistrationError as RuleRegistrationError
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
from ._seed_model import run_torch as run_torch
from .rules import LayerRule as LayerRule
from .rules import ParamMap as ParamMap
from .rules import register as register_rule
from .rules.conv import flatten as flatten

__all__ = [
    "DEFAULT_RTOL_ATOL",
    "BridgeError",
    "CheckpointError",
    "Comparison",
    "Divergence",
    "EquivalenceReport",
    "GradientRow",
    "InvalidArgumentError",
    "LayerMismatchError",
    "LayerRow",
    "LayerRule",
    "NonFiniteWarning",
    "ParamMap",
    "RuleRegistrationError",
    "UnknownLayerError",
    "UnsupportedModelError",
    "assert_equivalent",
    "check_equivalence",
    "flatten",
    "from_state_dict",
    "load_checkpoint",
    "load_into",
    "register_rule",
    "rules",
    "run_torch",
    "save_checkpoint",
    "to_flax",
    "to_nnx",
    "to_state_dict",
    "to_torch",
    "torch_layers",
]
