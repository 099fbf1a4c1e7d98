"""Conversion speed against the physical limit: one NumPy copy of the same bytes into fresh memory.

Run: ``python benchmarks/conversion_speed.py`` (or ``nox -s bench``). Measures, alternating the
candidates within each repeat and printing medians:
- eight 4096x4096 float32 Dense layers (512 MiB): torch's own transposing copy of the same kernels
  (``w.t().contiguous()`` into fresh memory, and ``b.clone()`` of the biases: the floor of any conversion
  that gives contiguous weights in torch's layout), ``np.array(copy=True)`` of every array (a plain
  memcpy, for scale), ``bridge.to_torch`` (default copy mode: contiguous) and ``to_torch(copy=False)``
  (DLPack views);
- peak extra memory of ``to_torch`` over the model's size (a child process per measurement);
- a chain of 2000 small Dense layers (4000 tensors): ``to_torch`` time;
- both, where ``transformers`` (< 5) can be imported, against Hugging Face's
  ``load_flax_weights_in_pytorch_model`` (the torch model built beforehand, outside its time; the
  Flax tree renamed to the torch names, as that function requires). It is not a dependency of the
  project: ``pip install --target DIR 'transformers<5' --no-deps`` and ``PYTHONPATH=DIR``.
"""

from __future__ import annotations

import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 7
MEMORY_PROBE = """
import gc, sys, numpy as np, jax, flax.linen as nn
sys.path.insert(0, sys.argv[1])
import bridge


def peak_bytes():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))


model = nn.Sequential([nn.Dense(4096) for _ in range(8)])
variables = jax.jit(model.init)(jax.random.PRNGKey(0), np.ones((1, 4096), np.float32))
jax.block_until_ready(variables)
size = sum(np.asarray(a).nbytes for a in jax.tree_util.tree_leaves(variables))
tiny = nn.Sequential([nn.Dense(8)])
bridge.to_torch(tiny, tiny.init(jax.random.PRNGKey(0), np.ones((1, 8), np.float32)))  # warm the code paths
gc.collect()
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # reset the peak (VmHWM) to the current resident size
before = peak_bytes()
converted = bridge.to_torch(model, variables)
print(size, peak_bytes() - before)
"""


def _median_seconds(function: object, repeats: int = REPEATS) -> list[float]:
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = function()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
        del result
    return times


def _hugging_face_loader() -> object | None:
    """``load_flax_weights_in_pytorch_model`` when transformers is importable, else None."""
    try:
        import transformers
        from transformers.modeling_flax_pytorch_utils import load_flax_weights_in_pytorch_model
    except ImportError:
        return None
    transformers.logging.set_verbosity_error()  # it logs a paragraph per call
    return load_flax_weights_in_pytorch_model


def _hugging_face_time(loader: object, model: object, variables: object, repeats: int) -> list[float]:
    """Time the Hugging Face loader on a torch Sequential built beforehand, the Flax tree keyed by torch position."""
    import bridge

    port = bridge.to_torch(model, variables)
    port.base_model_prefix = "model"  # what the function reads from a PreTrainedModel
    layers = [k for k in variables["params"]]  # layers_0, layers_1, ...: position = suffix
    state = {k.rsplit("_", 1)[1]: dict(variables["params"][k]) for k in layers}
    return _median_seconds(lambda: loader(port, state), repeats)  # type: ignore[operator]


def main() -> None:
    import flax.linen as nn
    import jax
    import numpy as np

    import bridge

    model = nn.Sequential([nn.Dense(4096) for _ in range(8)])
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), np.ones((1, 4096), np.float32))
    jax.block_until_ready(variables)
    import torch

    leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(variables)]
    size = sum(a.nbytes for a in leaves)
    tensors = [torch.from_numpy(np.array(a)) for a in leaves]

    def torch_transposing_copy() -> list[object]:
        return [t.t().contiguous() if t.ndim == 2 else t.clone() for t in tensors]

    copy_times, torch_times, convert_times, shared_times = [], [], [], []
    for _ in range(REPEATS):
        copy_times += _median_seconds(lambda: [np.array(a, copy=True) for a in leaves], 1)
        torch_times += _median_seconds(torch_transposing_copy, 1)
        convert_times += _median_seconds(lambda: bridge.to_torch(model, variables), 1)
        shared_times += _median_seconds(lambda: bridge.to_torch(model, variables, copy=False), 1)
    numpy_copy, torch_copy, convert, shared = (
        statistics.median(t) for t in (copy_times, torch_times, convert_times, shared_times)
    )
    print(f"8 x 4096x4096 float32 ({size / 2**20:.0f} MiB), medians of {REPEATS}:")
    print(f"  torch w.t().contiguous()      {torch_copy:.3f} s   runs {[round(t, 3) for t in torch_times]}")
    print(f"  NumPy memcpy (for scale)      {numpy_copy:.3f} s   runs {[round(t, 3) for t in copy_times]}")
    print(f"  bridge.to_torch (contiguous)  {convert:.3f} s   runs {[round(t, 3) for t in convert_times]}")
    print(f"  bridge.to_torch(copy=False)   {shared:.4f} s   (views, not contiguous)")
    print(f"  ratio to_torch / torch's transposing copy  {convert / torch_copy:.2f}  (target <= 1.2)")
    hugging_face = _hugging_face_loader()
    if hugging_face is not None:
        hf = statistics.median(_hugging_face_time(hugging_face, model, variables, 3))
        print(f"  Hugging Face loader           {hf:.3f} s   = {hf / convert:.1f} x bridge.to_torch (target >= 2)")
    else:
        print("  Hugging Face loader           not measured (transformers < 5 is not importable)")

    probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(ROOT)], check=True, capture_output=True, text=True)
    model_bytes, extra = map(int, probe.stdout.split())
    ratio = extra / model_bytes
    print(f"  peak extra memory of to_torch {extra / 2**20:.0f} MiB = {ratio:.2f} x the model (target < 1.1)")

    small = nn.Sequential([nn.Dense(4) for _ in range(2000)])
    small_variables = small.init(jax.random.PRNGKey(0), np.ones((1, 4), np.float32))
    small_times = _median_seconds(lambda: bridge.to_torch(small, small_variables), 5)
    small_median = statistics.median(small_times)
    print(f"2000 Dense(4) layers (4000 tensors): to_torch median {small_median:.3f} s (target < 0.1)")
    if hugging_face is not None:
        hf = statistics.median(_hugging_face_time(hugging_face, small, small_variables, 1))
        print(f"  Hugging Face loader               {hf:.3f} s   = {hf / small_median:.1f} x bridge.to_torch")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
