"""Checkpoints on disk: formats, streaming, atomic replacement, and the memory estimates that bound the work.

This file is the package's face: other packages import these names from here, never from its private modules.
"""

from ._atomic import atomic_output as atomic_output
from ._atomic import stage as stage
from ._files import FLAX_FORMATS as FLAX_FORMATS
from ._files import MAX_DEPTH as MAX_DEPTH
from ._files import SUPPORTED_DTYPES as SUPPORTED_DTYPES
from ._files import check_tensor as check_tensor
from ._files import checkpoint_format as checkpoint_format
from ._files import flatten_variables as flatten_variables
from ._files import load_checkpoint as load_checkpoint
from ._files import read_checkpoint as read_checkpoint
from ._files import read_flax_variables as read_flax_variables
from ._files import regular_file_size as regular_file_size
from ._files import replaceable as replaceable
from ._files import save_checkpoint as save_checkpoint
from ._files import write_checkpoint as write_checkpoint
from ._preflight import require_memory as require_memory
from ._stream import write_stream as write_stream
