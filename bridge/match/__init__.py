"""Pair the Flax side with the torch side by structure: the tensors a port's module owns (``_match``), the
chain by position (``_match_chain``), call trees (``_match_tree``) and loose variables (``_loose``).

This file is the package's face: other packages import these names from here, never from its private modules.
"""

from ._loose import NO_LOOSE as NO_LOOSE
from ._loose import LoosePair as LoosePair
from ._loose import LooseVariables as LooseVariables
from ._loose import match_loose as match_loose
from ._loose import pair_own_calls as pair_own_calls
from ._match import owned_tensors as owned_tensors
from ._match import port_tensors as port_tensors
from ._match import tensor_holders as tensor_holders
from ._match import unaccounted_tensors as unaccounted_tensors
from ._match_tree import Matching as Matching
from ._match_tree import Pair as Pair
from ._match_tree import chain_steps as chain_steps
from ._match_tree import descendants as descendants
from ._match_tree import describe_ties as describe_ties
from ._match_tree import find_input_permutations as find_input_permutations
from ._match_tree import flatten_permutation as flatten_permutation
from ._match_tree import match_calls as match_calls
from ._match_tree import signature as signature
from ._match_tree import tied_variables as tied_variables
from ._match_tree import unpaired_flax as unpaired_flax
