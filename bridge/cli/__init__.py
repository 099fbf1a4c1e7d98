"""The ``flax2torch`` command: parser, subcommands, and the containment of the user's code."""
