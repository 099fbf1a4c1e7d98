"""The subcommands by name (one module each) and what every run shares: JAX's compilation cache."""

from __future__ import annotations

import os

from ._check import run_check
from ._convert import run_convert
from ._convert_hf import run_convert_hf
from ._export import run_export
from ._golden import run_golden

# Programs that took less than this to compile are cheaper to rebuild than to read back.
_CACHE_MIN_COMPILE_SECONDS = 0.0


def use_compile_cache() -> None:
    """Keep XLA's compiled programs between runs (JAX's persistent compilation cache): a second
    ``flax2torch check`` skips most compilation. ``FLAX2TORCH_COMPILE_CACHE`` names the folder (default
    ``$XDG_CACHE_HOME/flax-torch-bridge/xla``, or ``~/.cache/...``) or turns it off (``off``); a folder
    set through JAX's own ``JAX_COMPILATION_CACHE_DIR`` is left as it is."""
    setting = os.environ.get("FLAX2TORCH_COMPILE_CACHE", "")
    if setting.lower() in ("0", "off", "false", "no"):
        return
    import jax

    if getattr(jax.config, "jax_compilation_cache_dir", None):
        return
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = setting or os.path.join(cache_home, "flax-torch-bridge", "xla")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return  # an optimisation only: without a writable folder, compile as usual
    if not os.access(directory, os.W_OK):
        return
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _CACHE_MIN_COMPILE_SECONDS)


COMMANDS = {
    "check": run_check,
    "convert": run_convert,
    "export": run_export,
    "golden": run_golden,
    "convert-hf": run_convert_hf,
}
