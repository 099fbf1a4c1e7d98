"""Conversion rules, one per layer kind. Every rule module is imported here, in one place."""

from . import activations as activations
from . import attention as attention
from . import conv as conv
from . import dense as dense
from . import embedding as embedding
from . import normalization as normalization
from . import pooling as pooling
from . import regularization as regularization
from ._hints import Hint as Hint
from ._hints import HintContext as HintContext
from ._registry import BoundInputs as BoundInputs
from ._registry import LayerRule as LayerRule
from ._registry import ParamMap as ParamMap
from ._registry import captured_methods as captured_methods
from ._registry import register as register
from ._registry import registered_rules as registered_rules
from ._registry import rule_for_call as rule_for_call
from ._registry import rule_for_flax as rule_for_flax
from ._registry import rule_for_torch as rule_for_torch
from ._registry import rule_or_none as rule_or_none
from ._registry import supported_flax_kinds as supported_flax_kinds
from ._registry import unregister as unregister
