"""Weights through the rules (``to_torch``, ``load_into``, ``to_flax``), the tree loader, and the jaxpr ->
torch translator with its export.

This file is the package's face: other packages import these names from here, never from its private modules.
"""

from ._convert import PlannedStep as PlannedStep
from ._convert import flatten_permutations as flatten_permutations
from ._convert import from_state_dict as from_state_dict
from ._convert import plan as plan
from ._convert import to_flax as to_flax
from ._convert import to_nnx as to_nnx
from ._convert import to_state_dict as to_state_dict
from ._convert import to_torch as to_torch
from ._convert import torch_module_for as torch_module_for
from ._export import export_class_name as export_class_name
from ._export import load_export as load_export
from ._export import unchanged_export as unchanged_export
from ._export import write_export as write_export
from ._load import load_into as load_into
from ._native import native_module as native_module
from ._seed_model import run_torch as run_torch
from ._seed_model import seed_models as seed_models
