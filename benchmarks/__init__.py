"""Benchmarks (run them with ``nox -s bench``); not part of the installed package."""
