"""Compare a candidate array with a reference under a per-element tolerance, with the statistics people ask for.

NaN against NaN and an infinity against the same infinity count as equal; a non-finite value
against anything else is a mismatch, never masked.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Comparison(NamedTuple):
    """Error statistics of one pair of arrays (reference = Flax, candidate = torch).

    ``worst_ratio`` is the largest error / tolerance: the comparison passes when it is at most 1, and
    the tolerance scaled by it is the smallest that would pass (``inf`` when a non-finite value differs).
    """

    shape: tuple[int, ...]
    candidate_shape: tuple[int, ...]
    max_abs: float
    max_abs_index: tuple[int, ...]
    max_rel: float
    max_rel_index: tuple[int, ...]
    mismatched: int
    size: int
    nonfinite_mismatched: int
    tolerance_at_worst: float
    worst_ratio: float

    @property
    def ok(self) -> bool:
        """Whether every element is within its tolerance (and the shapes agree)."""
        return self.shape == self.candidate_shape and self.mismatched == 0

    @property
    def mismatched_fraction(self) -> float:
        """The fraction of elements outside their tolerance."""
        return self.mismatched / self.size if self.size else 0.0


def compare(reference: np.ndarray, candidate: np.ndarray, tolerance: np.ndarray) -> Comparison:
    """Compare ``candidate`` with ``reference`` element by element under ``tolerance`` (broadcastable)."""
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    if reference.size == 0 and reference.shape == candidate.shape:
        return Comparison(reference.shape, candidate.shape, 0.0, (), 0.0, (), 0, 0, 0, 0.0, 0.0)
    if reference.shape != candidate.shape:
        nan = float("nan")
        return Comparison(
            reference.shape, candidate.shape, nan, (), nan, (), reference.size, reference.size, 0, nan, float("inf")
        )
    error, relative, ratio, bad, nonfinite_bad, tolerance = _elementwise(reference, candidate, tolerance)
    mismatched = int(np.count_nonzero(bad))
    abs_index = np.unravel_index(int(np.argmax(error)), reference.shape)
    rel_index = np.unravel_index(int(np.argmax(relative)), reference.shape)
    worst_index = np.unravel_index(int(np.argmax(ratio)), reference.shape)
    return Comparison(
        shape=reference.shape,
        candidate_shape=candidate.shape,
        max_abs=float(error[abs_index]),
        max_abs_index=tuple(int(i) for i in abs_index),
        max_rel=float(relative[rel_index]),
        max_rel_index=tuple(int(i) for i in rel_index),
        mismatched=mismatched,
        size=int(reference.size),
        nonfinite_mismatched=int(np.count_nonzero(nonfinite_bad)),
        tolerance_at_worst=float(tolerance[worst_index]),
        worst_ratio=float(ratio[worst_index]),
    )


class SeedComparison(NamedTuple):
    """Per-seed verdicts of a stack of comparisons (leading axis: seeds): elements outside their
    tolerance, and the largest error / tolerance, for each seed."""

    mismatched: np.ndarray
    worst_ratio: np.ndarray


def compare_per_seed(reference: np.ndarray, candidate: np.ndarray, tolerance: np.ndarray) -> SeedComparison:
    """``compare`` for each ``reference[s]`` against ``candidate[s]`` at once, keeping only the verdict numbers."""
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    seeds = len(reference)
    if reference.shape != candidate.shape:
        return SeedComparison(np.full(seeds, max(reference[0].size, 1)), np.full(seeds, np.inf))
    _, _, ratio, bad, _, _ = _elementwise(reference, candidate, tolerance)
    flat_ratio = ratio.reshape(seeds, -1)
    worst = flat_ratio.max(axis=1) if flat_ratio.shape[1] else np.zeros(seeds)
    return SeedComparison(bad.reshape(seeds, -1).sum(axis=1), worst)


def _elementwise(reference: np.ndarray, candidate: np.ndarray, tolerance: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(|error|, relative error, error / tolerance, outside tolerance, non-finite mismatch, tolerance)`` of
    same-shaped float64 arrays, the tolerance broadcast to their shape with NaN read as 0."""
    tolerance = np.broadcast_to(
        np.nan_to_num(np.asarray(tolerance, np.float64), nan=0.0, posinf=np.inf), reference.shape
    )
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(reference - candidate)
    if np.isfinite(error).all():  # both sides finite everywhere (the common case): fewer passes, same values
        return _finite_elementwise(reference, error, tolerance)
    return _general_elementwise(reference, candidate, tolerance)


def _general_elementwise(reference: np.ndarray, candidate: np.ndarray, tolerance: np.ndarray) -> tuple[np.ndarray, ...]:
    """``_elementwise`` with non-finite elements on either side (the tolerance already broadcast)."""
    both_finite = np.isfinite(reference) & np.isfinite(candidate)
    same_nonfinite = (np.isnan(reference) & np.isnan(candidate)) | (np.isinf(reference) & (reference == candidate))
    nonfinite_bad = ~both_finite & ~same_nonfinite
    error = np.where(both_finite, np.abs(reference - candidate), 0.0)
    relative = np.divide(error, np.abs(reference), out=np.zeros_like(error), where=both_finite & (reference != 0))
    ratio = np.divide(error, tolerance, out=np.where(error > 0, np.inf, 0.0), where=tolerance > 0)
    ratio[nonfinite_bad] = np.inf
    return error, relative, ratio, (error > tolerance) | nonfinite_bad, nonfinite_bad, tolerance


def _finite_elementwise(reference: np.ndarray, error: np.ndarray, tolerance: np.ndarray) -> tuple[np.ndarray, ...]:
    """``_elementwise`` where every element of both sides is finite: the same six arrays."""
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.abs(reference)
        relative = error / magnitude
        if not magnitude.all():
            relative[magnitude == 0] = 0.0
        ratio = error / tolerance
    if not (tolerance > 0).all():
        zero = tolerance <= 0
        ratio[zero] = np.where(error[zero] > 0, np.inf, 0.0)
    bad = error > tolerance
    return error, relative, ratio, bad, np.zeros(reference.shape, bool), tolerance
