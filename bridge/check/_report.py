"""The equivalence report: one row per chain position, the gradients, the first divergence and its hint."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .._numerics import Tolerance
from ._compare import Comparison


@dataclass(frozen=True)
class Divergence:
    """Where the port first goes wrong: chain position, both names, the layer kind, and a diagnosis."""

    index: int
    flax_path: str
    torch_name: str
    kind: str
    mode: str  # "isolated" (the layer's own error), "end to end", or "structure"
    hint: str | None


@dataclass(frozen=True)
class LayerRow:
    """One chain position: the end-to-end comparison (each side feeds itself) and the isolated one
    (the torch layer fed the Flax layer's input); ``isolated`` is None when the torch side has no such layer."""

    index: int
    kind: str
    flax_path: str
    torch_name: str
    torch_kind: str
    end_to_end: Comparison
    isolated: Comparison | None

    @property
    def ok(self) -> bool:
        """Whether both comparisons pass."""
        return self.end_to_end.ok and (self.isolated is None or self.isolated.ok)


class GradientRow(NamedTuple):
    """The gradient of the loss with respect to one input or parameter, on both sides."""

    name: str
    comparison: Comparison


@dataclass(frozen=True)
class EquivalenceReport:
    """The verdict of ``check_equivalence`` and everything behind it.

    Attributes:
        ok: whether the port computes the same function (every row, the output and the gradients pass).
        first_divergence: None, or where and why the port first differs.
        layers: one row per chain position.
        output: the comparison of the final outputs.
        gradients: one row per gradient (input first), empty when gradients were not checked.
        problems: structural problems (layer counts or kinds that differ), in order.
        nonfinite: for each side, the first position whose output holds NaN or Inf, if any.
        settings: how the check ran (dtype, tolerance mode, inputs, seed).
    """

    ok: bool
    first_divergence: Divergence | None
    layers: tuple[LayerRow, ...]
    output: Comparison
    gradients: tuple[GradientRow, ...]
    problems: tuple[str, ...]
    nonfinite: dict[str, int | None]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-serialisable data (non-finite numbers as strings)."""
        return _jsonable(
            {
                "ok": self.ok,
                "first_divergence": None if self.first_divergence is None else asdict(self.first_divergence),
                "layers": [
                    {
                        "index": row.index,
                        "kind": row.kind,
                        "flax_path": row.flax_path,
                        "torch_name": row.torch_name,
                        "torch_kind": row.torch_kind,
                        "ok": row.ok,
                        "end_to_end": _comparison_dict(row.end_to_end),
                        "isolated": None if row.isolated is None else _comparison_dict(row.isolated),
                    }
                    for row in self.layers
                ],
                "output": _comparison_dict(self.output),
                "gradients": [{"name": g.name, **_comparison_dict(g.comparison)} for g in self.gradients],
                "problems": list(self.problems),
                "nonfinite": self.nonfinite,
                "settings": self.settings,
            }
        )

    def __str__(self) -> str:
        return format_report(self)

    def to_html(self, path: str | Path) -> None:
        """Write the report as one self-contained HTML page (no network): the module tree coloured by err/tol,
        the first divergence and its hint, the gradient rows and the settings. Replaces only a file that is
        such a page already (written whole, or not at all).

        Raises:
            InvalidArgumentError: ``path`` exists and is not a report this package wrote, or cannot be written.
        """
        from ._html import report_html, write_report_file

        write_report_file(path, report_html(self).encode("utf-8"))

    def _repr_html_(self) -> str:
        """The report in a notebook (Jupyter): the page's content, without its script."""
        from ._html import report_fragment

        return report_fragment(self)


def _comparison_dict(c: Comparison) -> dict[str, Any]:
    return {**c._asdict(), "ok": c.ok, "mismatched_fraction": c.mismatched_fraction}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _num(value: float) -> str:
    return f"{value:.2e}" if value == value else "n/a"


def _ratio(c: Comparison | None) -> str:
    if c is None:
        return "-"
    if c.shape != c.candidate_shape:
        return "shape"
    return "NaN/Inf" if c.nonfinite_mismatched else f"{c.worst_ratio:.2g}"


def format_report(report: EquivalenceReport) -> str:
    """An aligned text table: one line per position, the output and gradients, the divergence highlighted."""
    header, rows = report_cells(report)
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in (header, *rows)]
    return "\n".join([*report_heading(report), *lines, *report_notes(report)])


def report_cells(report: EquivalenceReport) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The table's header and rows as text (one row per call, the output, the gradients): what both the plain
    text and the terminal's drawing show; a row's first cell is ``ok``, ``!!``, or ``>>`` at the divergence."""
    header = ("", "pos", "layer", "flax path", "torch", "shape", "max abs", "max rel", "mismatch", "tol", "err/tol")
    rows: list[tuple[str, ...]] = []
    first = report.first_divergence
    for row in report.layers:
        c = row.end_to_end
        marker = ">>" if first is not None and first.index == row.index else ("ok" if row.ok else "!!")
        path = row.flax_path or "-"
        if path != "(model)":  # each call indented under the one it runs in (a chain's positions one level in)
            path = "  " * (path.count("/") + 1) + path.rsplit("/", 1)[-1]
        torch_name = f"{row.torch_name}:{row.torch_kind}" if row.torch_name else "(none)"
        rows.append((marker, str(row.index), row.kind, path, torch_name, *_cells(c), _ratio(row.isolated)))
    o = report.output
    rows.append(("ok" if o.ok else "!!", "out", "output", "", "", *_cells(o), ""))
    for g in report.gradients:
        rows.append(("ok" if g.comparison.ok else "!!", "grad", "d loss", g.name, "", *_cells(g.comparison), ""))
    return (*header, "isolated"), rows


def _cells(c: Comparison) -> tuple[str, ...]:
    """A comparison's cells: shape (both where they differ), max abs, max rel, mismatch, tolerance, err/tol."""
    shape = "x".join(map(str, c.shape)) if c.shape == c.candidate_shape else f"{c.shape} vs {c.candidate_shape}"
    mismatch = f"{100 * c.mismatched_fraction:.1f}%"
    return shape, _num(c.max_abs), _num(c.max_rel), mismatch, _num(c.tolerance_at_worst), _ratio(c)


def report_heading(report: EquivalenceReport) -> list[str]:
    """The verdict line and the settings line above the table."""
    s = report.settings
    return [
        f"flax-torch-bridge equivalence check: {'EQUIVALENT' if report.ok else 'NOT EQUIVALENT'}",
        f"dtype {s.get('dtype')}, tolerance {s.get('tolerance')}, inputs {s.get('inputs')}; err/tol <= 1 passes",
    ]


def report_notes(report: EquivalenceReport) -> list[str]:
    """The lines under the table: problems, blocks not judged, NaN/Inf, rows left out, the divergence and hint."""
    s = report.settings
    first = report.first_divergence
    lines: list[str] = []
    lines.extend(f"problem: {p}" for p in report.problems)
    not_judged = s.get("composites_not_judged") or []
    if not_judged:
        lines.append(
            f"{len(not_judged)} blocks not judged on their own (every layer inside them and the output pass; the "
            "two sides take their arguments or cut their blocks differently): "
            + ", ".join(not_judged[:4])
            + (", ..." if len(not_judged) > 4 else "")
        )
    for side, position in report.nonfinite.items():
        if position is not None:
            lines.append(f"NaN/Inf first appears on the {side} side at position {position}")
    left_out = {
        why: s.get(f"gradient_rows_dropped_{key}", 0)
        for why, key in (("holding NaN/Inf", "nonfinite"), ("near a kink", "at_kinks"))
    }
    if any(left_out.values()):
        counts = ", ".join(f"{count} {why}" for why, count in left_out.items() if count)
        lines.append(f"gradients judged without some input rows (a correct port may differ there): {counts}")
    if first is not None:
        where = f"{first.kind} at '{first.flax_path}'" if first.flax_path else first.kind
        torch_side = f"torch '{first.torch_name}'" if first.torch_name else "no torch layer"
        lines.append(f">> first divergence: position {first.index} ({where} <-> {torch_side}), {first.mode}")
        lines.append(f"   hint: {first.hint or 'no known porting mistake explains it; compare the layer by hand'}")
    return lines


@dataclass(frozen=True)
class SeedSweepReport:
    """The verdict of ``check_equivalence(..., seeds=...)``: every seed's layer outputs compared at once,
    and the full report (gradients included when asked) of one seed: the first that fails, else the first.

    Attributes:
        seeds: the seeds checked, in order.
        seed_ok: for each seed, whether every layer's output (end to end and isolated) is within its
            tolerance; for ``detailed_seed``, also whether its full report passes.
        worst_ratio: for each seed, the largest error / tolerance over every layer (<= 1 passes).
        detailed_seed, detailed: the seed given a full ``EquivalenceReport``, and that report.
        settings: how the sweep ran (seeds, dtype, tolerance, inputs).
    """

    seeds: tuple[int, ...]
    seed_ok: tuple[bool, ...]
    worst_ratio: tuple[float, ...]
    detailed_seed: int
    detailed: EquivalenceReport
    settings: dict[str, Any]

    @property
    def ok(self) -> bool:
        """Whether every seed passes."""
        return all(self.seed_ok)

    @property
    def failed_seeds(self) -> tuple[int, ...]:
        """The seeds whose port is not equivalent, in order."""
        return tuple(seed for seed, ok in zip(self.seeds, self.seed_ok, strict=True) if not ok)

    def summary(self) -> str:
        """One line: how many seeds pass, the first failing ones, and the largest error / tolerance."""
        failed = self.failed_seeds
        shown = ", ".join(map(str, failed[:20])) + (", ..." if len(failed) > 20 else "")
        return (
            f"{len(self.seeds) - len(failed)}/{len(self.seeds)} seeds equivalent"
            + (f"; failed: {shown}" if failed else "")
            + f"; largest err/tol {max(self.worst_ratio):.2g}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The sweep as plain JSON-serialisable data (non-finite numbers as strings)."""
        return _jsonable(
            {
                "ok": self.ok,
                "seeds": list(self.seeds),
                "failed_seeds": list(self.failed_seeds),
                "worst_ratio": list(self.worst_ratio),
                "detailed_seed": self.detailed_seed,
                "detailed": self.detailed.to_dict(),
                "settings": self.settings,
            }
        )

    def __str__(self) -> str:
        detail = f"seed {self.detailed_seed}:\n{self.detailed}\n\n" if not self.detailed.ok or not self.ok else ""
        return detail + self.summary()


def describe_tolerance(tolerance: Tolerance | None) -> str:
    """How a report's settings name the tolerance, chains and trees alike: derived from each call's rounding
    error (its rule's bound, or a float64 run where no rule applies), or the explicit rtol/atol."""
    return "derived per call" if tolerance is None else f"rtol={tolerance.rtol:g}, atol={tolerance.atol:g}"


def describe_inputs(shapes: Sequence[tuple[int, ...]], drawn_from: int | None = None) -> str:
    """How a report's settings name the inputs, chains and trees alike: their shapes, and where they come from."""
    listed = ", ".join(str(tuple(s)) for s in shapes)
    where = "given" if drawn_from is None else f"normal(seed={drawn_from})"
    return f"shape{'s' if len(shapes) > 1 else ''} {listed}, {where}" if shapes else where
