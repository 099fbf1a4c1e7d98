"""What each ``flax2torch`` subcommand does, once its arguments are parsed."""

from __future__ import annotations

import argparse

import numpy as np

from ._cli import EXIT_MATCH, EXIT_MISMATCH
from ._seed_model import seed_models
from ._tensors import to_numpy, to_tensor


def run_check(args: argparse.Namespace) -> int:
    """``flax2torch check``: the seed problem on both sides; print both outputs and the largest difference."""
    x = np.zeros(args.in_features, np.float32)
    x[:1] = 1.0
    models = seed_models(args.seed, x, args.hidden, args.out)
    flax_out = np.asarray(models.model.apply(models.variables, models.x))
    torch_out = to_numpy(models.torch_module(to_tensor(models.x)).detach())
    diff = np.abs(flax_out.astype(np.float64) - torch_out.astype(np.float64))
    # torch.testing.assert_close's float32 tolerances; the full checker derives them per layer.
    ok = bool(np.all(diff <= 1e-5 + 1.3e-6 * np.abs(flax_out)))
    np.set_printoptions(precision=8, suppress=False)
    widths = f"{args.in_features}-{args.hidden}-{args.hidden}-{args.out}"
    print(f"seed {args.seed}, x = {np.asarray(models.x)}, widths {widths}")
    print(f"flax : {flax_out}")
    print(f"torch: {torch_out}")
    print(f"max abs difference: {diff.max():.3e}  ->  {'MATCH' if ok else 'MISMATCH'}")
    return EXIT_MATCH if ok else EXIT_MISMATCH
