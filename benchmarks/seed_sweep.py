"""Multi-seed checks: the vectorised sweep against the naive loop, side by side in one process.

Run: ``python benchmarks/seed_sweep.py`` (or ``nox -s bench``). The model is the seed's MLP
(3-16-16-2), 8 input rows per seed. Measured, medians of the repeats:
- the naive loop, one seed at a time: init, ``bridge.to_torch``, run both, ``np.allclose``;
- the loop of full checks it stands for: ``check_equivalence(..., seed=s, grads=False)`` per seed;
- the sweep, ``check_equivalence(..., seeds=range(N), grads=False)``: its first call in the process
  (XLA compilation included), a later call (compiles again: each call traces its own functions), and
  a call with JAX's persistent compilation cache warm (what ``flax2torch check --seeds`` uses).
Throughputs are seeds per second; the ratio is the sweep's over the naive loop's.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOOP_SEEDS = 200
SWEEP_SEEDS = (1000, 10000)
REPEATS = 3
HIDDEN, OUT, ROWS = 16, 2, 8


def _seconds(function: Any, *args: Any) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def main() -> None:
    import jax
    import numpy as np
    import torch

    import bridge
    import flax_impl
    import torch_impl

    model = flax_impl.SeqMLP(hidden=HIDDEN, out=OUT)
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.ones((1, 3), np.float32))

    def naive(seeds: range) -> list[bool]:
        verdicts = []
        for seed in seeds:
            x = np.random.default_rng(seed).standard_normal((ROWS, 3)).astype(np.float32)
            variables = model.init(jax.random.PRNGKey(seed), x)
            port = bridge.to_torch(model, variables)
            flax_out = np.asarray(model.apply(variables, x))
            with torch.no_grad():
                torch_out = port(torch.from_numpy(x)).numpy()
            verdicts.append(bool(np.allclose(flax_out, torch_out, rtol=1.3e-6, atol=1e-5)))
        return verdicts

    def full_checks(seeds: range) -> list[bool]:
        verdicts = []
        for seed in seeds:
            x = np.ones((1, 3), np.float32)
            variables = model.init(jax.random.PRNGKey(seed), x)
            port = bridge.load_into(model, variables, torch_impl.SeqMLP(3, HIDDEN, OUT))
            report = bridge.check_equivalence(model, variables, port, seed=seed, n_inputs=ROWS, grads=False)
            verdicts.append(report.ok)
        return verdicts

    def sweep(seeds: range) -> bridge.SeedSweepReport:
        port = torch_impl.SeqMLP(3, HIDDEN, OUT)
        return bridge.check_equivalence(model, template, port, seeds=seeds, n_inputs=ROWS, grads=False)

    naive(range(3))  # the loop's first seeds compile its operations: not counted
    full_checks(range(3))
    naive_rate = statistics.median(LOOP_SEEDS / _seconds(lambda: naive(range(LOOP_SEEDS))) for _ in range(REPEATS))
    full_rate = statistics.median(LOOP_SEEDS / _seconds(lambda: full_checks(range(LOOP_SEEDS))) for _ in range(REPEATS))
    print(
        f"seed MLP 3-{HIDDEN}-{HIDDEN}-{OUT}, {ROWS} input rows per seed; throughput in seeds/s (medians of {REPEATS})"
    )
    print(f"  naive loop (init, to_torch, run both, allclose)   {naive_rate:9.0f}   ({LOOP_SEEDS} seeds)")
    print(f"  loop of check_equivalence(grads=False)            {full_rate:9.0f}   ({LOOP_SEEDS} seeds)")

    for n in SWEEP_SEEDS:
        first = _seconds(sweep, range(n))
        later = statistics.median(_seconds(sweep, range(n, 2 * n)) for _ in range(REPEATS))
        print(
            f"  sweep of {n:>5} seeds, first call (compiles)     {n / first:9.0f}   "
            f"= {n / first / naive_rate:5.1f} x naive, {n / first / full_rate:5.1f} x full checks ({first:.2f} s)"
        )
        print(
            f"  sweep of {n:>5} seeds, later call                {n / later:9.0f}   "
            f"= {n / later / naive_rate:5.1f} x naive, {n / later / full_rate:5.1f} x full checks ({later:.2f} s)"
        )
    same = list(sweep(range(LOOP_SEEDS)).seed_ok) == full_checks(range(LOOP_SEEDS))
    print(f"  same verdicts as the loop of full checks on seeds 0-{LOOP_SEEDS - 1}: {same}")
    with tempfile.TemporaryDirectory() as cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        for n in SWEEP_SEEDS:
            sweep(range(n))  # fills the cache
            warm = statistics.median(_seconds(sweep, range(n, 2 * n)) for _ in range(REPEATS))
            print(
                f"  sweep of {n:>5} seeds, compilation cache warm    {n / warm:9.0f}   "
                f"= {n / warm / naive_rate:5.1f} x naive, {n / warm / full_rate:5.1f} x full checks ({warm:.2f} s)"
            )
    print("  target: >= 20 x the naive loop")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
