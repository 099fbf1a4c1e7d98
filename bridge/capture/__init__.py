"""Run a model and record what it computes: both sides' arguments (``_arguments``); every module call
(``_capture_tree``; an ``nn.Sequential``'s layers each a call: a chain's positions, ``_capture``); the chain's
layers found without running it (``_chain``); the array leaves of what they return (``_leaves``).

This file is the package's face: other packages import these names from here, never from its private modules.
"""

from ._arguments import pair_arguments as pair_arguments
from ._capture import chain_calls as chain_calls
from ._capture import flax_layer_outputs as flax_layer_outputs
from ._capture import positions as positions
from ._capture import torch_positions as torch_positions
from ._capture_tree import Call as Call
from ._capture_tree import capture_flax as capture_flax
from ._capture_tree import capture_nnx as capture_nnx
from ._capture_tree import capture_torch as capture_torch
from ._capture_tree import nnx_paths as nnx_paths
from ._capture_tree import nnx_variables as nnx_variables
from ._capture_tree import refuse_training_mode as refuse_training_mode
from ._chain import Step as Step
from ._chain import Variables as Variables
from ._chain import chain_or_none as chain_or_none
from ._chain import discover_chain as discover_chain
from ._chain import drawn_rows as drawn_rows
from ._chain import layer_name as layer_name
from ._chain import variables_at as variables_at
from ._leaves import array_leaves as array_leaves
from ._leaves import keyed_like as keyed_like
from ._leaves import output_leaves as output_leaves
