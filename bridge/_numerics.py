"""Floating-point error analysis: how far two correct implementations of a layer may differ.

A dot product of length K accumulated in unit roundoff u differs from the exact value by about
``sqrt(K) * u * sqrt(|s|^2/3 + ||t||^2/6)`` for a sum s of terms t when rounding errors behave
like random signs (Higham and Mary, "A new approach to probabilistic rounding error analysis",
2019). We bound it by ``C_DOT * sqrt(K) * u * (|s| + ||t||_2)``, which never exceeds the classical
``C_DOT * sqrt(K) * u * sum|t|`` yet stays tight when terms cancel (|s| << sum|t|), as in wide layers.
A bias is one more term (a BLAS kernel may start its accumulator at the bias, so every partial sum
carries it), and each side's final rounding is at least half an ulp of its own result, whatever
cancelled inside: the bounds add whole ulps of the output (``ulp``), never a fraction of one.
Two ports each carry such an error; their difference is compared against the bound. The bounds hold
for any summation order that does not sort the terms adversarially (sequential either way, blocked,
pairwise, random, with or without FMA, any thread count, float64 then rounded): tests/
test_computed_differently.py and benchmarks/false_alarms.py measure that.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

# Safety factor of the probabilistic bound. Two sequential sums of K random-sign terms differ by about
# 0.6 * u * K * sigma (rounding errors of partial sums of a random walk) where the bound gives
# C_DOT * u * K * sigma: C_DOT = 8 keeps a five-sigma deviation at 0.4 of it. benchmarks/false_alarms.py
# measures the largest err/tol over every summation order; a 1e-4 relative change of a 4096-wide
# layer's weights still exceeds the bound (the detection thresholds are printed there too).
C_DOT = 8.0
# Ulps allowed for each stored result (the output, and the product before a bias is added): each side
# rounds it once, half an ulp of its own value (which may lie one binade up); two such roundings apart
# are one ulp, a third of this.
C_OUTPUT_ULPS = 3.0
# Roundings of stored results per layer in a backward pass (a product, a sum over the batch, a cast);
# measured: bfloat16 bias gradients of a correct port differ by up to 6 units of roundoff.
C_ROUND = 4.0


class Precision(NamedTuple):
    """Unit roundoffs of a computation: of stored results and of accumulation (float32 for half types on
    CPU, as every BLAS and cuBLAS kernel accumulates them), and the smallest positive stored value."""

    storage: float
    accumulation: float
    subnormal: float = 0.0

    @classmethod
    def of(cls, dtype: Any) -> Precision:
        """The precision of a layer computing in ``dtype`` (float16/bfloat16 accumulate in float32)."""
        storage = unit_roundoff(dtype)
        return cls(storage, min(storage, unit_roundoff(np.float32)), float(_finfo(dtype).smallest_subnormal))


def _finfo(dtype: Any) -> Any:
    dt = np.dtype(dtype)
    return ml_dtypes.finfo(dt) if dt == np.dtype(ml_dtypes.bfloat16) else np.finfo(dt)


def unit_roundoff(dtype: Any) -> float:
    """Half the machine epsilon of a floating dtype (``2**-24`` for float32, ``2**-8`` for bfloat16)."""
    return float(_finfo(dtype).eps) / 2.0


def ulp(values: np.ndarray, precision: Precision) -> np.ndarray:
    """The spacing of the stored dtype's numbers at ``|values|`` (float64 in, float64 out): ``2**-23`` at
    1.0 in float32, the smallest subnormal near zero. Non-finite values give 0 (compared apart)."""
    magnitude = np.abs(np.asarray(values, np.float64))
    with np.errstate(invalid="ignore"):
        _, exponent = np.frexp(np.where(np.isfinite(magnitude), magnitude, 0.0))
    return np.maximum(np.ldexp(precision.storage, exponent), precision.subnormal)


def affine_error_bound(
    squares: np.ndarray,
    bias: np.ndarray | None,
    y: np.ndarray,
    fan_in: int,
    precision: Precision,
) -> np.ndarray:
    """How far two correct ports of ``y = x . w + b`` may differ, per element (float64 arrays).

    ``squares`` is ``x^2 . w^2`` (the squared terms summed, at least their exact sum: ``squared_products``);
    ``bias`` broadcasts against it (None: no bias). The bias counts as one more term of the sum; the
    roundings are those of both sides' output and, with a bias, of the product before it is added (Flax's
    Dense and torch's ``x @ w.T + b`` both round it): ``x . w`` lies within the accumulation bound of
    ``y - b``, so the spacing at ``|y - b|`` plus that bound covers it without computing the product.
    """
    b = 0.0 if bias is None else np.abs(bias)
    terms = fan_in + (bias is not None)
    norm = np.sqrt(squares + np.square(b))
    accumulation = C_DOT * np.sqrt(terms) * precision.accumulation * (np.abs(y) + norm)
    if bias is None:
        rounding = ulp(y, precision)
    else:
        product = np.abs(y - bias) + 2.0 * accumulation + ulp(y, precision)  # at least |x . w|
        rounding = ulp(product, precision) + ulp(y, precision)
    return accumulation + C_OUTPUT_ULPS * rounding


_SAFE_MAGNITUDES = (1e-18, 1e18)  # nonzero |values| whose squares and their products stay float32-finite


def squared_products(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x^2 @ w^2`` as float64, never below its exact value: computed in float32 (a fourth of the float64
    cost) when every nonzero magnitude lies in ``[1e-18, 1e18]``, else (or where float32 overflows) in
    float64; then raised by the most a sum of ``K`` non-negative terms and their roundings can lose in that
    dtype, ``(K + 6)`` unit roundoffs, and by ``K`` times its smallest normal for products that underflow."""
    if _in_range(x) and _in_range(w):
        narrow = _raised_squares(x, w, np.float32)
        if np.isfinite(narrow).all():
            return narrow
    return _raised_squares(x, w, np.float64)


def _raised_squares(x: np.ndarray, w: np.ndarray, dtype: Any) -> np.ndarray:
    fan_in = x.shape[-1]
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        sums = np.square(np.asarray(x, dtype)) @ np.square(np.asarray(w, dtype))
    raised = np.asarray(sums, np.float64) * (1.0 + 2.0 * (fan_in + 6) * unit_roundoff(dtype))
    return raised + fan_in * float(np.finfo(dtype).tiny)


def _in_range(values: np.ndarray) -> bool:
    """Whether every value is finite and every nonzero magnitude lies in ``_SAFE_MAGNITUDES`` (read in the
    values' own dtype, float32 at least: no float64 copy of a large weight)."""
    array = np.asarray(values)
    magnitude = np.abs(array if array.dtype in (np.float32, np.float64) else np.asarray(array, np.float32))
    low, high = _SAFE_MAGNITUDES
    largest = magnitude.max(initial=0.0)  # NaN when any value is NaN: then not in range
    return bool(largest <= high) and bool(np.min(magnitude, where=magnitude > 0, initial=high) >= low)


def propagated_error(tol_in: np.ndarray, w: np.ndarray) -> np.ndarray:
    """How input errors ``tol_in`` reach ``x @ w``: independent errors add in quadrature, ``sqrt(tol^2 @ w^2)``
    (0 for an exact input, as in isolated comparisons, without the product)."""
    if not tol_in.any():
        return np.zeros(())
    return np.sqrt(squared_products(tol_in, w))


# torch.testing.assert_close's defaults (rtol, atol), used when a caller sets one of rtol/atol only.
DEFAULT_RTOL_ATOL: dict[str, tuple[float, float]] = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
}


# Two frameworks' versions of one elementary function (tanh, erf, exp, rsqrt) differ by a few roundings.
FUNCTION_ROUNDOFFS = 16


# Elements per slab of the passes over large arrays: a slab's float64 temporaries stay in cache (compare
# was fastest at this size, 7x faster than whole-array passes over 16M elements).
SLAB = 1 << 16


def slabs(*arrays: np.ndarray, size: int | None = None) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
    """Same-shaped arrays cut into matching slabs of about ``size`` elements (whole rows of the last axis),
    each with the flat (C-order) index of its first element."""
    shape = arrays[0].shape
    rows = (1, 1) if not shape else (-1, shape[-1]) if len(shape) > 1 else (-1, 1)
    views = [a.reshape(rows) for a in arrays]
    width = views[0].shape[1]
    step = max(1, (SLAB if size is None else size) // max(width, 1))
    for start in range(0, views[0].shape[0], step):
        yield start * width, tuple(v[start : start + step] for v in views)


def finite_rms(values: np.ndarray) -> float:
    """The root mean square of the finite entries (0 when there are none), one slab at a time."""
    array = np.asarray(values)
    total, count = 0.0, 0
    for _, (slab,) in slabs(array) if array.size else ():
        squares = np.square(np.asarray(slab, np.float64))
        part = squares.sum()
        if np.isfinite(part):
            total, count = total + part, count + slab.size
        else:  # leave the NaN and infinite entries out
            finite = np.isfinite(slab)
            total, count = total + squares[finite].sum(), count + int(np.count_nonzero(finite))
    return float(np.sqrt(total / count)) if count else 0.0


def finite_rms_per_seed(values: np.ndarray) -> np.ndarray:
    """``finite_rms`` of each ``values[s]`` of a stack (leading axis: seeds), shaped to broadcast against it."""
    return np.array([finite_rms(v) for v in values]).reshape((-1,) + (1,) * (values.ndim - 1))


def function_rounding(x: np.ndarray, y: np.ndarray, u: float, *, stacked: bool = False) -> np.ndarray:
    """How far two implementations of one elementwise or normalising function may differ: a few
    roundings relative to the output, its RMS (normalisations), and the input where shapes agree
    (``x * Phi(x)`` in an exact GELU is accurate relative to x, not to the product). ``stacked``:
    the arrays carry a leading axis of seeds, each with its own RMS."""
    scale = np.abs(y) + (finite_rms_per_seed(y) if stacked else finite_rms(y))
    if x.shape == y.shape:
        scale = scale + np.abs(x)
    return FUNCTION_ROUNDOFFS * u * scale


class Tolerance(NamedTuple):
    """A tolerance affine in the reference's magnitude, ``atol + rtol * |reference|``: an explicit rtol/atol, or
    a bound of that form (gradients), which ``compare`` applies slab by slab without an array of its own."""

    rtol: float
    atol: float

    def of(self, reference: np.ndarray) -> np.ndarray:
        """The per-element tolerance for ``reference``."""
        return self.atol + self.rtol * np.abs(reference)

    def plus(self, *, rtol: float = 0.0, atol: float = 0.0) -> Tolerance:
        """This tolerance widened by ``atol + rtol * |reference|``."""
        return Tolerance(self.rtol + rtol, self.atol + atol)


def gradient_tolerance(reference: np.ndarray, length: int, depth: int, precision: Precision) -> Tolerance:
    """A bound for gradients, whose exact analysis would need every backward product. Relative to the
    element's magnitude plus the tensor's RMS (sums that cancel): each of ``depth`` layers adds an
    accumulation error ``C_DOT * sqrt(length) * u_acc`` (products of length up to ``length``) and a few
    roundings of stored results ``C_ROUND * u_storage``."""
    depth = max(depth, 1)
    relative = C_DOT * np.sqrt(length * depth) * precision.accumulation + C_ROUND * depth * precision.storage
    return Tolerance(relative, relative * finite_rms(reference))
