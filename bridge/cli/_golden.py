"""``flax2torch golden``: the seed model's weights, inputs and both outputs in one safetensors file."""

from __future__ import annotations

import argparse

import numpy as np

from .._errors import InvalidArgumentError
from ._exit import EXIT_MATCH


def run_golden(args: argparse.Namespace) -> int:
    """``flax2torch golden OUT.safetensors``: the seed model's variables, inputs and both outputs, with versions."""
    import flax
    import jax
    import torch

    from .._tensors import to_numpy, to_tensor
    from .._validate import require_seed
    from ..convert import seed_models, to_state_dict
    from ..io import atomic_output, replaceable, require_memory
    from ._pair import mlp_check_bytes, require_widths

    if not args.destination.lower().endswith(".safetensors"):
        raise InvalidArgumentError(f"{args.destination}: golden writes a .safetensors file; name it OUT.safetensors")
    require_seed(args.seed, "--seed")
    require_widths(args.in_features, args.hidden, args.out)
    widths = f"widths {args.in_features}-{args.hidden}-{args.hidden}-{args.out}"
    needed = mlp_check_bytes(args.n_inputs, args.in_features, args.hidden, args.out)
    require_memory(needed, f"golden vectors of {args.n_inputs} inputs at {widths}", "use fewer --n-inputs")
    rng = np.random.default_rng(args.seed)
    inputs = rng.standard_normal((args.n_inputs, args.in_features)).astype(np.float32)
    models = seed_models(args.seed, inputs, args.hidden, args.out)
    with torch.no_grad():
        torch_output = models.torch_module(to_tensor(inputs))
    tensors = {f"state/{key}": value for key, value in to_state_dict(models.model, models.variables).items()}
    tensors["inputs"] = to_tensor(inputs)
    tensors["outputs/flax"] = to_tensor(np.asarray(models.model.apply(models.variables, inputs)))
    tensors["outputs/torch"] = torch_output.contiguous()
    metadata = {
        "format": "pt",
        "jax": jax.__version__,
        "flax": flax.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "seed": str(args.seed),
        "widths": f"{args.in_features}-{args.hidden}-{args.hidden}-{args.out}",
    }
    from safetensors.torch import save_file

    with atomic_output(args.destination, force=args.force, may_replace=replaceable("safetensors")) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)  # its own temporary lands in the staging folder
    largest = float(np.abs(to_numpy(tensors["outputs/flax"]) - to_numpy(torch_output)).max())
    print(f"wrote {args.destination}: {len(tensors)} tensors; flax vs torch max abs difference {largest:.3e}")
    return EXIT_MATCH
