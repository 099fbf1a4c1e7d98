"""False alarms of the checker's tolerances on correct ports, and the smallest weight change they catch.

Run: ``python benchmarks/false_alarms.py [cases per dtype, default 20000]`` (or ``nox -s bench``).

For each dtype (float32, float64, bfloat16, float16) it draws Dense layers with K from 1 to 4096 (half
of them K <= 16), input scales 1e-3..1e3, biases zero, ordinary or 1e3 times x.w, and cancelling rows,
and computes each with every implementation of tests/summation_orders.py (float64 then rounded, left
to right and right to left without FMA, pairwise, random order, blocked with the bias first, torch's
kernel on one thread and on all, torch's matmul then a bias add). A layer case is one layer and one
implementation; it is a false alarm when the checker's Dense bound (the rule's ``error_bound``) is
exceeded anywhere. Prints the count and the largest err/tol per dtype and per implementation.

Then, for K = 64, 512 and 4096 in float32, the smallest relative change ``||dW|| / ||W||`` of a whole
weight matrix (a random direction) that the bound catches, by bisection over 1e-8..1e-2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from summation_orders import BF16, ORDERS, DenseCases, affine, dense_bound, flax_dense_outputs, worst_ratios  # noqa: E402

DTYPES = [np.dtype(np.float32), np.dtype(np.float64), BF16, np.dtype(np.float16)]
STACK = 8  # layers drawn at once (one vectorised Flax call)


def false_alarms(dtype: np.dtype, layer_cases: int, seed: int) -> tuple[int, dict[str, float], int]:
    """``(false alarms, largest err/tol per implementation, layer cases run)`` for one dtype."""
    rng = np.random.default_rng(seed)
    worst = dict.fromkeys(ORDERS, 0.0)
    alarms = done = 0
    while done < layer_cases:
        k = int(rng.integers(1, 17)) if rng.random() < 0.5 else int(rng.integers(17, 4097))
        x_scale = 10.0 ** rng.uniform(-3, 3 if dtype != np.float16 else 1)
        bias_scale = [None, 1.0, 1e3 if dtype != np.float16 else 1e2][int(rng.integers(3))]
        cases = DenseCases(
            k,
            cases=STACK,
            rows=3,
            n=4,
            dtype=dtype,
            x_scale=x_scale,
            bias_scale=bias_scale,
            cancel=bool(rng.integers(2)),
            seed=int(rng.integers(2**31)),
        )
        flax_y = flax_dense_outputs(cases)
        tolerance = dense_bound(cases, flax_y)
        for order in ORDERS:
            ratios = worst_ratios(flax_y, affine(cases.x, cases.kernel, cases.bias, order, seed=done), tolerance)
            alarms += int(np.count_nonzero(ratios > 1.0))
            worst[order] = max(worst[order], float(ratios.max()))
            done += STACK
    return alarms, worst, done


def smallest_caught(k: int, seed: int = 0) -> float:
    """The smallest ``||dW|| / ||W||`` (float32, 32 rows, 64 outputs, bias ~ x.w) whose port fails."""
    cases = DenseCases(
        k, cases=4, rows=32, n=64, dtype=np.float32, x_scale=1.0, bias_scale=1.0, cancel=False, seed=seed
    )
    flax_y = flax_dense_outputs(cases)
    tolerance = dense_bound(cases, flax_y)
    direction = np.random.default_rng(seed).standard_normal(cases.kernel.shape)
    scale = np.linalg.norm(cases.kernel.astype(np.float64), axis=(1, 2)) / np.linalg.norm(direction, axis=(1, 2))

    def caught(delta: float) -> bool:
        changed = (cases.kernel + delta * scale[:, None, None] * direction).astype(np.float32)
        return bool(worst_ratios(flax_y, affine(cases.x, changed, cases.bias, "torch_threads"), tolerance).min() > 1)

    low, high = 1e-8, 1e-2
    for _ in range(40):  # bisection in log space
        middle = float(np.sqrt(low * high))
        low, high = (low, middle) if caught(middle) else (middle, high)
    return high


def main() -> None:
    layer_cases = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    print(f"correct ports computed differently: {layer_cases}+ layer cases per dtype, {len(ORDERS)} implementations")
    for index, dtype in enumerate(DTYPES):
        start = time.perf_counter()
        alarms, worst, done = false_alarms(dtype, layer_cases, seed=index)
        largest = max(worst.values())
        print(
            f"  {dtype.name:9} {done} cases, false alarms {alarms}, largest err/tol {largest:.3f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
        print("            " + ", ".join(f"{order} {value:.3f}" for order, value in worst.items()))
    print("smallest relative change of a whole weight matrix caught (float32, every one of 4 layers):")
    for k in (64, 512, 4096):
        print(f"  K = {k:4}: {smallest_caught(k):.2e}  (must be <= 1e-4)")


if __name__ == "__main__":
    main()
