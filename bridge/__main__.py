"""``python -m bridge``: the ``flax2torch`` command line."""

from .cli import entry_point

entry_point()
