"""The exit statuses of ``flax2torch``: 0 equivalent or done, 1 not equivalent, 2 usage, 3 internal error,
124 timed out, 130 interrupted."""

EXIT_MATCH, EXIT_MISMATCH, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_TIMEOUT, EXIT_INTERRUPTED = 124, 130
