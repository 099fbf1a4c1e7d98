"""The ``flax2torch`` command: parser, one module per subcommand, and the containment of the user's code.

This file is the package's face: ``main(argv)`` runs the command in-process and returns its exit status,
``entry_point()`` is the console script.
"""

from ._cli import entry_point as entry_point
from ._cli import main as main
