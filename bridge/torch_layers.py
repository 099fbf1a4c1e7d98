"""``bridge.torch_layers``: the torch modules the rules build, importable by this name (they live with the
rules, in ``bridge/rules/torch_layers.py``)."""

from .rules.torch_layers import ChannelsFirstFlatten as ChannelsFirstFlatten
from .rules.torch_layers import FlaxAvgPool as FlaxAvgPool
from .rules.torch_layers import FlaxConv1d as FlaxConv1d
from .rules.torch_layers import FlaxConv2d as FlaxConv2d
from .rules.torch_layers import FlaxGroupNorm as FlaxGroupNorm
from .rules.torch_layers import FlaxMaxPool as FlaxMaxPool
from .rules.torch_layers import FlaxPool as FlaxPool
from .rules.torch_layers import same_padding as same_padding
